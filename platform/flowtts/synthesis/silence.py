"""Silence detection on float mono numpy audio, with pydub's semantics (upstream uses pydub, we do not).

Loudness is RMS relative to full scale (1.0), in dBFS. ``detect_silence`` slides a window of
``min_silence_ms`` in steps of ``seek_ms`` and calls a window silent when its RMS is at or below the
threshold, merging overlapping silent windows into ranges, exactly as ``pydub.silence`` does.
Positions are in samples.
"""

from __future__ import annotations

import numpy as np

SEEK_MS = 10


def db_to_amplitude(db: float) -> float:
    return float(10 ** (db / 20))


def ms_to_samples(ms: float, sample_rate: int) -> int:
    return int(round(ms * sample_rate / 1000))


def window_rms(wav: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """RMS of ``wav[s : s + width]`` for every start (windows clipped at the end)."""
    energy = np.concatenate(([0.0], np.cumsum(wav.astype(np.float64) ** 2)))
    ends = np.minimum(starts + width, len(wav))
    counts = np.maximum(ends - starts, 1)
    return np.sqrt((energy[ends] - energy[starts]) / counts)


def detect_silence(
    wav: np.ndarray, sample_rate: int, min_silence_ms: int, thresh_db: float, seek_ms: int = SEEK_MS
) -> list[tuple[int, int]]:
    """Silent ranges ``[(start, end)]`` at least ``min_silence_ms`` long."""
    width = ms_to_samples(min_silence_ms, sample_rate)
    step = ms_to_samples(seek_ms, sample_rate)
    if len(wav) < width:
        return []
    last = len(wav) - width
    starts = np.arange(0, last + 1, step)
    if last % step:
        starts = np.append(starts, last)
    silent = starts[window_rms(wav, starts, width) <= db_to_amplitude(thresh_db)].tolist()
    if not silent:
        return []
    ranges = []
    range_start = previous = silent[0]
    for start in silent[1:]:
        continuous = start == previous + step
        has_gap = start > previous + width
        if not continuous and has_gap:
            ranges.append((range_start, previous + width))
            range_start = start
        previous = start
    ranges.append((range_start, previous + width))
    return ranges


def detect_nonsilent(
    wav: np.ndarray, sample_rate: int, min_silence_ms: int, thresh_db: float, seek_ms: int = SEEK_MS
) -> list[tuple[int, int]]:
    """The complement of ``detect_silence`` within ``[0, len(wav))``."""
    silent = detect_silence(wav, sample_rate, min_silence_ms, thresh_db, seek_ms)
    if not silent:
        return [(0, len(wav))]
    if silent[0] == (0, len(wav)):
        return []
    ranges, previous_end = [], 0
    for start, end in silent:
        ranges.append((previous_end, start))
        previous_end = end
    if previous_end != len(wav):
        ranges.append((previous_end, len(wav)))
    return [r for r in ranges if r != (0, 0)]


def split_on_silence(
    wav: np.ndarray,
    sample_rate: int,
    min_silence_ms: int,
    thresh_db: float,
    keep_silence_ms: int,
    seek_ms: int = SEEK_MS,
) -> list[np.ndarray]:
    """Non-silent pieces padded by ``keep_silence_ms`` each side; overlapping pads meet halfway."""
    keep = ms_to_samples(keep_silence_ms, sample_rate)
    ranges = [
        [start - keep, end + keep]
        for start, end in detect_nonsilent(wav, sample_rate, min_silence_ms, thresh_db, seek_ms)
    ]
    for current, following in zip(ranges, ranges[1:], strict=False):
        if following[0] < current[1]:
            current[1] = following[0] = (current[1] + following[0]) // 2
    return [wav[max(start, 0) : min(end, len(wav))] for start, end in ranges]


def leading_silence(wav: np.ndarray, sample_rate: int, thresh_db: float, chunk_ms: int = 10) -> int:
    """Samples before the first ``chunk_ms`` chunk at or above ``thresh_db`` (pydub's leading silence)."""
    width = ms_to_samples(chunk_ms, sample_rate)
    starts = np.arange(0, len(wav), width)
    loud = np.flatnonzero(window_rms(wav, starts, width) >= db_to_amplitude(thresh_db))
    return int(starts[loud[0]]) if loud.size else len(wav)


def trailing_silence(wav: np.ndarray, sample_rate: int, thresh_db: float, chunk_ms: int = 1) -> int:
    """Samples after the last ``chunk_ms`` chunk louder than ``thresh_db`` (upstream's end trim)."""
    width = ms_to_samples(chunk_ms, sample_rate)
    starts = np.arange(0, len(wav), width)
    loud = np.flatnonzero(window_rms(wav, starts, width) > db_to_amplitude(thresh_db))
    return len(wav) - min(int(starts[loud[-1]]) + width, len(wav)) if loud.size else len(wav)


def trim_silence_edges(wav: np.ndarray, sample_rate: int, thresh_db: float = -42.0) -> np.ndarray:
    """Drop leading silence in 10 ms chunks and trailing silence in 1 ms chunks, as upstream."""
    wav = wav[leading_silence(wav, sample_rate, thresh_db) :]
    return wav[: len(wav) - trailing_silence(wav, sample_rate, thresh_db)]


def remove_silences(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Upstream's ``remove_silence`` on generated audio: pauses over 1 s at -50 dBFS shrink to 1 s.

    Audio that is silent throughout is returned unchanged (upstream would return nothing).
    """
    pieces = split_on_silence(wav, sample_rate, min_silence_ms=1000, thresh_db=-50.0, keep_silence_ms=500)
    if not pieces:
        return wav
    return np.concatenate(pieces).astype(np.float32, copy=False)
