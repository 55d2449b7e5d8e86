"""Evaluation: objective metrics between reference and generated speech features."""

from flowtts.evaluation.metrics import (
    MelMetrics,
    compare_mels,
    dtw_path,
    duration_error,
    mape,
    mcd_dtw,
    mel_cepstrum,
    mel_l1,
    word_error_rate,
)

__all__ = [
    "MelMetrics",
    "compare_mels",
    "dtw_path",
    "duration_error",
    "mape",
    "mcd_dtw",
    "mel_cepstrum",
    "mel_l1",
    "word_error_rate",
]
