"""A request turned into sampler rows: front end, chunks, per-chunk durations and seeds.

Seeds: chunk ``i`` of a request with seed ``s`` is sampled with seed ``s + i``, so a one-chunk request
with seed ``s`` reproduces ``CFM.sample(seed=s)``. A request without a seed draws one and reports it.
With ``candidates`` N > 1 (best-of-N, ``flowtts.synthesis.candidates``), candidate ``k`` of chunk ``i`` of a
request of ``n`` chunks has seed ``s + i + k * n``: candidate 0 is the request without candidates, and
candidate ``k`` is what the same request with seed ``s + k * n`` samples.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from flowtts.audio import DEFAULT_MEL
from flowtts.config import MelConfig
from flowtts.model.duration_predictor import DurationPredictor
from flowtts.synthesis.chunking import CROSS_FADE_S, balanced_chunks, lead_chunks, max_chunk_bytes
from flowtts.synthesis.duration_rules import (
    BYTE_RATIO_RULE,
    FIXED_RULE,
    PREDICTOR_RULE,
    byte_ratio_frames,
    fixed_frames,
    predicted_frames,
)
from flowtts.synthesis.errors import InvalidOptionsError
from flowtts.synthesis.reference import Reference, speakable_text
from flowtts.synthesis.sampling import SamplingSettings
from flowtts.text import Vocab

SEED_LIMIT = 2**31  # drawn seeds stay short enough to type back
MAX_CROSS_FADE_S = 1.0


@dataclass(frozen=True)
class SynthesisOptions:
    """Per-call options (upstream defaults): how to sample, and what to do around sampling."""

    sampling: SamplingSettings = SamplingSettings()
    speed: float = 1.0
    seed: int | None = None  # None: draw one and report it in the result
    fix_duration: float | None = None  # total seconds, reference plus generated, as upstream
    remove_silence: bool = False  # shorten pauses over 1 s to 1 s, on the whole output
    cross_fade_duration: float = CROSS_FADE_S  # seconds of linear cross-fade between chunks; 0: butt joins
    first_chunk_bytes: int | None = None  # streaming: a short first chunk (chunking.lead_chunks)
    candidates: int = 1  # best of N: each chunk sampled N times, the ASR judge keeps the best (needs judges)

    def __post_init__(self) -> None:
        checks = [
            ("speed", self.speed > 0, "> 0"),
            ("seed", self.seed is None or 0 <= self.seed < 2**63, "None or in [0, 2**63)"),
            ("fix_duration", self.fix_duration is None or self.fix_duration > 0, "None or > 0 seconds"),
            (
                "cross_fade_duration",
                0 <= self.cross_fade_duration <= MAX_CROSS_FADE_S,
                f"0 to {MAX_CROSS_FADE_S} seconds",
            ),
            ("first_chunk_bytes", self.first_chunk_bytes is None or self.first_chunk_bytes > 0, "None or > 0"),
            ("candidates", isinstance(self.candidates, int) and self.candidates >= 1, "an integer >= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidOptionsError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")


DEFAULT_OPTIONS = SynthesisOptions()


@dataclass
class SampleItem:
    """One row of a batched ``CFM.sample`` call; rows of different requests can share a call."""

    cond: torch.Tensor  # [n_ref, n_mels] reference mel
    text_ids: list[int]  # prompt text + chunk text
    total_frames: int  # prompt plus generated frames
    prompt_frames: int  # frames cut from the front of the output
    seed: int
    keep: torch.Tensor | None = None  # [n_ref] bool, a speech edit's kept frames (None: keep all of cond)


@dataclass
class SynthesisPlan:
    reference: Reference
    chunks: list[str]
    items: list[SampleItem]
    options: SynthesisOptions
    seed: int  # the request's seed (chunk i uses seed + i)
    duration_rule: Literal["byte_ratio", "fixed", "predictor"]


def draw_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


def plan_synthesis(
    text: str,
    reference: Reference,
    options: SynthesisOptions,
    *,
    vocab: Vocab,
    frontend: Callable[[str], str],
    mel: MelConfig = DEFAULT_MEL,
    unknown: Literal["error", "space"] = "error",
    predictor: DurationPredictor | None = None,
) -> SynthesisPlan:
    """Front end, chunks within upstream's budget (upstream's count, even sizes), one sampler row each.

    Durations: ``fix_duration`` when given, else the model's duration predictor when it has one, else
    upstream's byte-ratio rule; ``speed`` divides the generated part in both estimates.
    """
    spoken = speakable_text(text, frontend, "text")
    budget = max_chunk_bytes(reference.text, reference.duration_s, options.speed)
    if options.first_chunk_bytes is None:
        chunks = balanced_chunks(spoken, budget)
    else:
        chunks = lead_chunks(spoken, budget, options.first_chunk_bytes)
    chunk_tokens = [vocab.encode(chunk, unknown=unknown) for chunk in chunks]
    token_rows = [reference.tokens + ids for ids in chunk_tokens]
    if options.fix_duration is not None:
        rule = FIXED_RULE
        totals = fixed_frames(options.fix_duration, reference.prompt_frames, chunks, options.cross_fade_duration, mel)
    elif predictor is not None:
        rule = PREDICTOR_RULE
        generated = predicted_frames(predictor, reference.tokens, reference.mel, chunk_tokens, options.speed)
        totals = [reference.prompt_frames + frames for frames in generated]
    else:
        rule = BYTE_RATIO_RULE
        totals = [
            byte_ratio_frames(reference.prompt_frames, reference.prompt_text, chunk, options.speed) for chunk in chunks
        ]
    seed = options.seed if options.seed is not None else draw_seed()
    items = [
        SampleItem(
            cond=reference.mel,
            text_ids=ids,
            total_frames=total,
            prompt_frames=reference.prompt_frames,
            seed=seed + index,
        )
        for index, (ids, total) in enumerate(zip(token_rows, totals, strict=True))
    ]
    return SynthesisPlan(
        reference=reference, chunks=chunks, items=items, options=options, seed=seed, duration_rule=rule
    )
