"""Long text: upstream's chunk budget, its punctuation chunker, and the linear cross-fade joining chunks.

Chunk budget (``infer_process``): ``int(ref_text_bytes / ref_s * (22 - ref_s) * speed)`` UTF-8 bytes, so a
chunk plus its reference lasts about 22 s. Text splits after ``; : , . ! ?`` followed by whitespace and
after ``； ： ， 。 ！ ？``; pieces are merged greedily while the chunk stays within the budget.

Two deliberate differences, both only where upstream's result would cost more:
- a single piece longer than the budget (a long run without punctuation) is cut at spaces, where
  upstream would send it whole and exceed the model's ~30 s window;
- ``balanced_chunks`` keeps upstream's number of chunks and budget but evens their sizes. Upstream
  samples chunks one after another, so its greedy split (full chunks, then a short remainder) costs
  nothing extra there; we sample all chunks of a request in one batch padded to the longest, where
  equal chunks avoid computing padding and shorten the attention span.

``lead_chunks`` is for streaming, where chunks are sampled one after another and the first sound waits
for the first chunk: that chunk is the text's first clause, cut at a space to a small byte budget (as
upstream's socket server and Kokoro shorten their first chunk); the rest is balanced as above.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

CHUNK_WINDOW_S = 22.0
CROSS_FADE_S = 0.15
_PIECE_END = re.compile(r"(?<=[;:,.!?])\s+|(?<=[；：，。！？])")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def max_chunk_bytes(ref_text: str, ref_duration_s: float, speed: float = 1.0) -> int:
    """Upstream's budget; the reference text is the processed transcript (ending in ". ")."""
    return int(_nbytes(ref_text) / ref_duration_s * (CHUNK_WINDOW_S - ref_duration_s) * speed)


def chunk_text(text: str, max_bytes: int) -> list[str]:
    """Split at sentence and clause punctuation into chunks of at most ``max_bytes`` UTF-8 bytes."""
    chunks: list[str] = []
    current = ""
    for piece in _pieces(text, max_bytes):
        if _nbytes(current) + _nbytes(piece) > max_bytes and current:
            chunks.append(current.strip())
            current = ""
        current += piece + " " if piece and _nbytes(piece[-1]) == 1 else piece
    if current.strip():
        chunks.append(current.strip())
    return chunks


def balanced_chunks(text: str, max_bytes: int) -> list[str]:
    """As many chunks as ``chunk_text(text, max_bytes)`` gives, of about equal size: ``chunk_text`` with
    the smallest budget that still yields that many (never below the longest piece, so no sentence or
    clause is cut that upstream keeps whole)."""
    upstream = chunk_text(text, max_bytes)
    if len(upstream) < 2:
        return upstream
    longest_piece = max(_nbytes(piece) for piece in _pieces(text, max_bytes))
    low = min(max(longest_piece, _nbytes(" ".join(upstream)) // len(upstream)), max_bytes)
    high = max_bytes
    while low < high:  # the chunk count only falls as the budget grows
        middle = (low + high) // 2
        if len(chunk_text(text, middle)) <= len(upstream):
            high = middle
        else:
            low = middle + 1
    return chunk_text(text, low)


def lead_chunks(text: str, max_bytes: int, first_bytes: int) -> list[str]:
    """``balanced_chunks`` after a short first chunk: the first clause, or its first words within
    ``first_bytes`` (a single longer word stays whole). Text within ``first_bytes`` stays one chunk."""
    if _nbytes(text.strip()) <= first_bytes:
        return balanced_chunks(text, max_bytes)
    clause = _PIECE_END.split(text.strip(), maxsplit=1)[0]
    first = _split_at_spaces(clause, min(first_bytes, max_bytes))[0]
    words = text.split(None, len(first.split()))
    rest = words[-1] if len(words) > len(first.split()) else ""
    return [first, *balanced_chunks(rest, max_bytes)] if rest else [first]


def _pieces(text: str, max_bytes: int) -> list[str]:
    pieces = []
    for piece in _PIECE_END.split(text):
        pieces.extend(_split_at_spaces(piece, max_bytes) if _nbytes(piece) > max_bytes else [piece])
    return pieces


def _split_at_spaces(piece: str, max_bytes: int) -> list[str]:
    """Greedy word runs of at most ``max_bytes`` (a single longer word stays whole)."""
    runs, current = [], ""
    for word in piece.split():
        candidate = f"{current} {word}" if current else word
        if current and _nbytes(candidate) > max_bytes:
            runs.append(current)
            candidate = word
        current = candidate
    return [*runs, current] if current else runs


def cross_fade(waves: Sequence[np.ndarray], sample_rate: int, seconds: float = CROSS_FADE_S) -> np.ndarray:
    """Join waves, overlapping neighbours by ``seconds`` with linear fades (shorter waves overlap less)."""
    if not waves:
        return np.zeros(0, dtype=np.float32)
    out = np.asarray(waves[0], dtype=np.float32)
    for wave in waves[1:]:
        wave = np.asarray(wave, dtype=np.float32)
        overlap = min(int(seconds * sample_rate), len(out), len(wave))
        if overlap <= 0:
            out = np.concatenate([out, wave])
            continue
        fade_in = np.linspace(0.0, 1.0, overlap, dtype=np.float32)
        mixed = out[-overlap:] * (1.0 - fade_in) + wave[:overlap] * fade_in
        out = np.concatenate([out[:-overlap], mixed, wave[overlap:]])
    return out
