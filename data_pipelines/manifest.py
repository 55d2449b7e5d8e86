"""Pieces of ``manifest.json``: statistics over the kept clips, the mel settings and the input fingerprint."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from flowtts.config import MelConfig

SECONDS_PER_HOUR = 3600.0


def duration_histogram(durations: Sequence[float], max_duration: float) -> dict:
    """Counts per 1-second bin from 0 to ``ceil(max_duration)``; the last bin includes its upper edge."""
    n_bins = max(1, math.ceil(max_duration))
    counts = [0] * n_bins
    for duration in durations:
        counts[min(int(duration), n_bins - 1)] += 1
    return {"bin_edges_s": list(range(n_bins + 1)), "counts": counts}


def hours_per_speaker(speakers: Sequence[str], durations: Sequence[float]) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for speaker, duration in zip(speakers, durations, strict=True):
        totals[speaker] += duration
    return {speaker: round(totals[speaker] / SECONDS_PER_HOUR, 6) for speaker in sorted(totals)}


def input_fingerprint(input_files: Iterable[tuple[str, bytes]], audio_hashes: Iterable[tuple[str, str]]) -> str:
    """sha256 over the named input files' bytes and each decoded clip's (key, sha256 of its bytes).

    Content only (no paths outside the corpus, no mtimes): a copy of the corpus fingerprints the same.
    """
    digest = hashlib.sha256()
    for name, content in input_files:
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    for key, sha in sorted(audio_hashes):
        digest.update(f"{key}\0{sha}\n".encode())
    return digest.hexdigest()


def mel_settings(mel: MelConfig) -> dict:
    """Everything needed to recompute the stored mel: ``flowtts.audio.log_mel_spectrogram`` as configured."""
    return {
        **mel.model_dump(),
        "f_min": 0.0,
        "f_max": mel.target_sample_rate / 2,
        "mel_scale": "htk",
        "filterbank_norm": None,
        "window": "hann",
        "center": True,
        "pad_mode": "reflect",
        "power": 1,
        "log": "natural log of max(magnitude, 1e-5), computed in float64",
        "layout": "time-major [n_frames, n_mels], n_frames = samples // hop_length + 1",
        "storage": "float16 little-endian bytes (flowtts.shards.encode_mel)",
        "downmix": "channel mean",
        "resample": "torchaudio.functional.resample (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99)",
    }
