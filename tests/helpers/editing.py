"""Where a speech edit keeps the recording: the frame rule of ``flowtts.synthesis.editing``, in samples."""

from __future__ import annotations

from flowtts.synthesis import EDIT_FADE_S

SR = 24000
HOP = 256
FADE = int(EDIT_FADE_S * SR)


def kept_runs(spans_s, new_frames, total):
    """(original start, original end, output start) in samples of each kept run, by the frame rule."""
    runs, shift, previous = [], 0, 0
    for (start, end), count in zip(spans_s, new_frames, strict=True):
        first, last = round(start * SR / HOP), round(end * SR / HOP)
        runs.append((previous * HOP, first * HOP, (previous + shift) * HOP))
        shift += count - (last - first)
        previous = last
    runs.append((previous * HOP, total, (previous + shift) * HOP))
    return runs
