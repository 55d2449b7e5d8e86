"""Joining streamed chunks exactly as ``flowtts.synthesis.cross_fade`` joins a whole utterance.

``cross_fade`` overlaps each wave with the end of everything before it by up to ``seconds``. To stream,
the joiner emits all but that tail at once and holds the tail back until the next chunk (or the end)
arrives, so the concatenated output equals ``cross_fade(waves)`` sample for sample. What streaming
cannot reproduce is the final whole-utterance peak limit: streamed samples are clipped instead.
"""

from __future__ import annotations

import numpy as np

from flowtts.synthesis import CROSS_FADE_S


class CrossFadeJoiner:
    """``push(wave) -> ready samples``; ``finish() -> the held tail``."""

    def __init__(self, sample_rate: int, seconds: float = CROSS_FADE_S):
        self.fade = int(seconds * sample_rate)
        self.tail = np.zeros(0, dtype=np.float32)
        self.started = False

    def push(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if self.started:
            overlap = min(self.fade, len(self.tail), len(wave))
            if overlap > 0:
                ramp = np.linspace(0.0, 1.0, overlap, dtype=np.float32)
                mixed = self.tail[-overlap:] * (1.0 - ramp) + wave[:overlap] * ramp
                wave = np.concatenate([self.tail[:-overlap], mixed, wave[overlap:]])
            else:
                wave = np.concatenate([self.tail, wave])
        self.started = True
        keep = min(self.fade, len(wave))
        ready, self.tail = wave[: len(wave) - keep], wave[len(wave) - keep :]
        return ready

    def finish(self) -> np.ndarray:
        tail, self.tail = self.tail, np.zeros(0, dtype=np.float32)
        return tail
