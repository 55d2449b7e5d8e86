"""Choosing among candidate renditions of one text chunk: scores in, choice out.

A candidate's score is what the judges found in its audio (``flowtts.synthesis.candidates`` computes it):
the character error rate (CER) of the ASR judge's transcript against the chunk's text, its word error rate
(WER; Vietnamese words are syllables) and, when a speaker judge is loaded, the cosine similarity of the
candidate's voice print with the reference voice's.

The rule, deterministic: the lowest CER; among equal CERs the lowest WER; then the highest similarity (a
missing or NaN similarity ranks below any number); then the lowest index. "Equal" is float equality: the
error rates of one chunk share their denominator (the chunk's length), so equal error counts give equal
rates. Candidate 0 is the result without re-ranking (the request's own seeds), so when the judges cannot
tell the candidates apart the choice changes nothing.

Pure Python: no model, no I/O; the Synthesizer, serving and the batch job call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CandidateScore", "choose_candidate", "rank_candidates"]


@dataclass(frozen=True)
class CandidateScore:
    """What the judges found in one candidate (sampled with ``seed``)."""

    seed: int
    cer: float  # character error rate of the transcript against the text; may exceed 1
    wer: float  # word (Vietnamese: syllable) error rate
    similarity: float | None = None  # cosine of voice prints with the reference, in [-1, 1]; None: no speaker judge
    transcript: str = ""  # what the ASR judge heard

    def as_dict(self, digits: int = 4) -> dict[str, float | int | None]:
        """``{seed, cer, wer, similarity}`` rounded to ``digits`` (for headers and logs)."""
        similarity = None if self.similarity is None else round(self.similarity, digits)
        return {
            "seed": self.seed,
            "cer": round(self.cer, digits),
            "wer": round(self.wer, digits),
            "similarity": similarity,
        }


def _worst_if_nan(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _key(score: CandidateScore, index: int) -> tuple[float, float, float, int]:
    similarity = score.similarity
    missing = similarity is None or math.isnan(similarity)
    return (_worst_if_nan(score.cer), _worst_if_nan(score.wer), math.inf if missing else -similarity, index)


def rank_candidates(scores: Sequence[CandidateScore]) -> list[int]:
    """Indices of ``scores``, best first, by the module's rule."""
    if not scores:
        raise ValueError("ranking candidates needs at least one score, got none")
    return sorted(range(len(scores)), key=lambda index: _key(scores[index], index))


def choose_candidate(scores: Sequence[CandidateScore]) -> int:
    """The index of the best candidate: lowest CER, then WER, then highest similarity, then lowest index."""
    return rank_candidates(scores)[0]
