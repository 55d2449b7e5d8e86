"""Best-of-N synthesis: every chunk sampled N times in the same batched call, the candidates judged, the
best one kept. F5-TTS sometimes skips, repeats or swallows words; upstream's advice is to generate again
and keep the best, which this does for the user.

Seeds: candidate ``k`` of chunk ``i`` of a request with seed ``s`` and ``n`` chunks (over all voice
segments) is sampled with seed ``s + i + k * n`` (``candidate_items``). Candidate 0 is therefore the result
without candidates, candidate ``k`` is what the same request with seed ``s + k * n`` samples, and no two rows
of a request share a seed.

Judging (``CandidateJudges.score``): each candidate is vocoded (the candidates of a chunk have one length,
so they share one vocoder call and one ASR forward pass) and scored by the ASR judge, the error rate of its
transcript against the chunk's text as the model read it (after the text front end: numbers and dates spelt
out), in characters (CER) and words (WER; Vietnamese words are syllables), and, when a speaker judge is
loaded, by the cosine similarity of its voice print with the reference voice's (the tie-breaker). The choice
is ``flowtts.evaluation.reranking.choose_candidate``. Each chunk of a long text is chosen on its own.

The judges are any objects with the methods used here: ``Transcriber`` (this package) for the ASR judge, and
a ``VoicePrinter`` such as ``flowtts.evaluation.judges.SpeakerJudge`` for the speaker judge (typed by a
Protocol: the evaluation package imports synthesis, not the other way round).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torchaudio

from flowtts.evaluation.metrics import error_counts
from flowtts.evaluation.reranking import CandidateScore, choose_candidate
from flowtts.synthesis.multivoice import VoicedPlan
from flowtts.synthesis.planning import SampleItem
from flowtts.synthesis.reference import Reference
from flowtts.synthesis.transcription import ASR_SAMPLE_RATE, Transcriber

logger = logging.getLogger(__name__)

VOICE_PRINT_CACHE = 64  # reference voice prints kept per judges object


class VoicePrinter(Protocol):
    """A speaker judge: the voice print (x-vector) of a 16 kHz mono clip."""

    def embed(self, audio: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ChunkChoice:
    """The candidates of one chunk, as the judges scored them, and the index of the one kept."""

    scores: tuple[CandidateScore, ...]
    chosen: int

    @property
    def seed(self) -> int:
        return self.scores[self.chosen].seed


@dataclass
class Reranked:
    """Per chunk: the chosen mel, its vocoded wave (before the reference's RMS scale) and the choice."""

    mels: list[torch.Tensor]
    waves: list[np.ndarray]
    choices: list[ChunkChoice]


def candidate_items(items: Sequence[SampleItem], candidates: int) -> list[SampleItem]:
    """The rows of ``candidates`` candidates of each item: row ``k * n + i`` is candidate ``k`` of item ``i``
    (``n`` items), seeded ``items[i].seed + k * n``; rows ``0..n-1`` are ``items`` themselves."""
    n = len(items)
    return [item if k == 0 else replace(item, seed=item.seed + k * n) for k in range(candidates) for item in items]


def error_rates(text: str, transcript: str) -> tuple[float, float]:
    """(CER, WER) of ``transcript`` against ``text``; (0, 0) when the text has no word to compare."""
    try:
        return error_counts(text, transcript, "char").rate, error_counts(text, transcript, "word").rate
    except ValueError:  # nothing speakable to compare with (e.g. only symbols)
        return 0.0, 0.0


def to_judge_rate(wave: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    audio = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    return (
        audio if sample_rate == ASR_SAMPLE_RATE else torchaudio.functional.resample(audio, sample_rate, ASR_SAMPLE_RATE)
    )


@dataclass
class CandidateJudges:
    """The ASR judge and, optionally, the speaker judge; loaded once, shared by concurrent callers."""

    asr: Transcriber
    speaker: VoicePrinter | None = None
    _prints: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def voice_print(self, reference: Reference, sample_rate: int) -> torch.Tensor | None:
        """The speaker judge's voice print of a reference's audio (kept for the next requests), or None."""
        if self.speaker is None:
            return None
        key = hashlib.sha256(reference.audio.tobytes()).hexdigest()
        with self._lock:
            if key in self._prints:
                self._prints.move_to_end(key)
                return self._prints[key]
        embedding = self.speaker.embed(to_judge_rate(reference.audio, sample_rate))
        with self._lock:
            self._prints[key] = embedding
            while len(self._prints) > VOICE_PRINT_CACHE:
                self._prints.popitem(last=False)
        return embedding

    def score(
        self, text: str, waves: Sequence[np.ndarray], sample_rate: int, seeds: Sequence[int], reference: Reference
    ) -> list[CandidateScore]:
        """Each candidate wave (mono, ``sample_rate``) scored against ``text`` and ``reference``'s voice."""
        heard = self.asr.transcribe_batch(list(waves), sample_rate)
        voice = self.voice_print(reference, sample_rate)
        scores = []
        for wave, transcript, seed in zip(waves, heard, seeds, strict=True):
            cer, wer = error_rates(text, transcript)
            similarity = None
            if voice is not None:
                embedding = self.speaker.embed(to_judge_rate(wave, sample_rate))
                similarity = float(torch.nn.functional.cosine_similarity(embedding, voice, dim=0))
            scores.append(CandidateScore(seed=seed, cer=cer, wer=wer, similarity=similarity, transcript=transcript))
        return scores

    def choose(
        self, text: str, waves: Sequence[np.ndarray], sample_rate: int, seeds: Sequence[int], reference: Reference
    ) -> ChunkChoice:
        scores = tuple(self.score(text, waves, sample_rate, seeds, reference))
        choice = ChunkChoice(scores=scores, chosen=choose_candidate(scores))
        logger.debug("chunk %r: kept seed %d of %s", text[:40], choice.seed, [s.as_dict() for s in scores])
        return choice


Vocode = Callable[[list[torch.Tensor]], list[np.ndarray]]


def choose_chunk(
    plan: VoicedPlan, index: int, mels: list[torch.Tensor], judges: CandidateJudges, vocode: Vocode, sample_rate: int
) -> tuple[torch.Tensor, np.ndarray, ChunkChoice]:
    """Chunk ``index``'s candidates (mels in candidate order) vocoded and judged: the chosen mel, its wave
    (before the reference's RMS scale) and the choice."""
    segment, offset = plan.locate(index)
    waves = vocode(mels)  # one length: one decoder call
    seeds = [item.seed for item in candidate_items(plan.items, len(mels))[index :: len(plan.items)]]
    heard = [wave * segment.reference.rms_scale for wave in waves]  # as the output will sound
    choice = judges.choose(segment.chunks[offset], heard, sample_rate, seeds, segment.reference)
    return mels[choice.chosen], waves[choice.chosen], choice


def rerank(
    plan: VoicedPlan, mels: list[torch.Tensor], judges: CandidateJudges, vocode: Vocode, sample_rate: int
) -> Reranked:
    """``mels`` of ``candidate_items(plan.items, N)`` -> each chunk's chosen mel and wave, and the choices."""
    n = len(plan.items)
    if not n or not mels or len(mels) % n:
        raise ValueError(f"got {len(mels)} mels for the candidates of a plan of {n} chunks")
    chosen = [choose_chunk(plan, index, mels[index::n], judges, vocode, sample_rate) for index in range(n)]
    return Reranked(
        mels=[mel for mel, _, _ in chosen],
        waves=[wave for _, wave, _ in chosen],
        choices=[choice for _, _, choice in chosen],
    )
