"""Evaluation: objective metrics between reference and generated speech features."""

from flowtts.evaluation.metrics import (
    ErrorCounts,
    MelMetrics,
    character_error_rate,
    compare_mels,
    dtw_path,
    duration_error,
    error_counts,
    mape,
    mcd_dtw,
    mel_cepstrum,
    mel_l1,
    sum_error_counts,
    word_error_rate,
)

__all__ = [
    "ErrorCounts",
    "MelMetrics",
    "character_error_rate",
    "compare_mels",
    "dtw_path",
    "duration_error",
    "error_counts",
    "mape",
    "mcd_dtw",
    "mel_cepstrum",
    "mel_l1",
    "sum_error_counts",
    "word_error_rate",
]
