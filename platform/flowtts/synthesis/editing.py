"""Speech editing: regenerate spans of a recording so it says a new text, keep everything else as it was.

Sampling follows upstream's ``speech_edit.py``: the recording's mel (raised to ``target_rms`` when
quieter), with each edited span ``[start, end)`` replaced by zero frames of the span's new duration, is
the condition; an edit mask marks the kept frames; the text is the whole new transcript; the CFM
regenerates the masked frames. Spans become frames as upstream rounds them (``round(s * rate / hop)``).

Beyond upstream, which re-vocodes the whole recording, the output outside the edited spans is the
original recording sample for sample. The vocoded edit is used for the regenerated spans only, and joined
to the original with ``EDIT_FADE_S`` linear cross-fades placed inside the kept audio next to each span:
over those few milliseconds the original fades into the re-vocoded kept frames (the same mel, so the same
sound), which continue without a seam into the regenerated frames.

Span durations: ``durations`` when given; else the span's own length adjusted to keep the recording's
speaking rate: the UTF-8 bytes the new text gains (or loses) over the old one, at the old text's bytes
per second, shared among the spans by their lengths (upstream keeps the span lengths; with texts of equal
length the rules agree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from flowtts.audio import DEFAULT_MEL, log_mel_spectrogram
from flowtts.config import MelConfig
from flowtts.synthesis.duration_rules import utf8_len
from flowtts.synthesis.errors import InvalidEditError
from flowtts.synthesis.output import limit_peak
from flowtts.synthesis.planning import SampleItem, draw_seed
from flowtts.synthesis.reference import TARGET_RMS, AudioInput, load_reference_audio, raise_to_rms, speakable_text
from flowtts.text import Vocab

EDIT_FADE_S = 0.02
MIN_SPAN_S = 0.1  # the shortest regenerated span the speaking-rate rule gives
MAX_EDITED_S = 60.0  # the edited recording, in seconds: the model attends over all of it
GIVEN_RULE = "given"
RATE_RULE = "speaking_rate"


@dataclass
class EditPlan:
    original: np.ndarray  # [samples] float32 at the mel's rate, the recording as given
    item: SampleItem  # the one sampler row: edited mel condition, new text, keep mask
    spans: list[tuple[int, int]]  # (start, end) frames of each edited span in the original
    new_frames: list[int]  # frames each span is regenerated with
    rms_scale: float  # brings the generated audio back to the recording's loudness
    seed: int
    duration_rule: Literal["given", "speaking_rate"]


@dataclass
class EditResult:
    audio: np.ndarray  # [samples] float32: the original outside the edited spans
    seed: int
    duration_rule: str
    spans: list[tuple[float, float]]  # (start, end) seconds of each regenerated span in ``audio``
    sample_rate: int = 24000

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def check_spans(
    spans: Sequence[Sequence[float]], durations: Sequence[float] | None, seconds: float
) -> list[tuple[float, float]]:
    """Spans as ``(start, end)`` floats, sorted, not overlapping and inside the recording; durations > 0,
    one per span. Raises ``InvalidEditError`` naming the first bad entry."""
    if not spans:
        raise InvalidEditError("spans is empty; give at least one [start, end] in seconds")
    checked: list[tuple[float, float]] = []
    for index, span in enumerate(spans):
        if len(span) != 2:
            raise InvalidEditError(f"spans[{index}]={list(span)!r} is not a [start, end] pair of seconds")
        start, end = float(span[0]), float(span[1])
        if not (np.isfinite(start) and np.isfinite(end)) or not 0 <= start < end:
            raise InvalidEditError(f"spans[{index}]=[{start}, {end}] must have 0 <= start < end")
        if end > seconds:
            raise InvalidEditError(
                f"spans[{index}]=[{start}, {end}] ends after the recording, which lasts {seconds:.3f} s"
            )
        if checked and start < checked[-1][1]:
            raise InvalidEditError(
                f"spans[{index}]=[{start}, {end}] starts before spans[{index - 1}] ends ({checked[-1][1]}); "
                "spans must be sorted and must not overlap"
            )
        checked.append((start, end))
    if durations is not None:
        if len(durations) != len(checked):
            raise InvalidEditError(f"durations has {len(durations)} entries for {len(checked)} spans; give one each")
        for index, seconds_i in enumerate(durations):
            if not (np.isfinite(seconds_i) and seconds_i > 0):
                raise InvalidEditError(f"durations[{index}]={seconds_i!r} must be > 0 seconds")
    return checked


def rate_durations(spans: list[tuple[float, float]], old_text: str, new_text: str, seconds: float) -> list[float]:
    """The speaking-rate rule (module docstring): span lengths plus the new text's extra bytes' time."""
    lengths = [end - start for start, end in spans]
    extra = seconds * (utf8_len(new_text) / utf8_len(old_text) - 1.0)
    return [max(MIN_SPAN_S, length + extra * length / sum(lengths)) for length in lengths]


def plan_edit(
    audio: AudioInput,
    text: str,
    new_text: str,
    spans: Sequence[Sequence[float]],
    *,
    durations: Sequence[float] | None = None,
    sample_rate: int | None = None,
    seed: int | None = None,
    target_rms: float = TARGET_RMS,
    vocab: Vocab,
    frontend: Callable[[str], str],
    mel: MelConfig = DEFAULT_MEL,
    unknown: Literal["error", "space"] = "error",
) -> EditPlan:
    """The sampler row of an edit (see the module docstring); ``text`` is what the recording says."""
    rate, hop = mel.target_sample_rate, mel.hop_length
    original = load_reference_audio(audio, sample_rate, rate, "audio to edit")
    seconds = len(original) / rate
    checked = check_spans(spans, durations, seconds)
    old_spoken = speakable_text(text, frontend, "text")
    new_spoken = speakable_text(new_text, frontend, "new_text")
    rule = GIVEN_RULE if durations is not None else RATE_RULE
    lengths = (
        [float(d) for d in durations]
        if durations is not None
        else rate_durations(checked, old_spoken, new_spoken, seconds)
    )
    frames = [(round(start * rate / hop), round(end * rate / hop)) for start, end in checked]
    for index, (first, last) in enumerate(frames):
        if last <= first:
            raise InvalidEditError(f"spans[{index}]={list(checked[index])} is shorter than one mel frame")
    new_frames = [max(1, round(length * rate / hop)) for length in lengths]
    raised, rms_scale = raise_to_rms(original, target_rms)
    source = log_mel_spectrogram(torch.from_numpy(raised), mel)[0].T  # [n, n_mels]
    cond, keep, offset = [], [], 0
    for (first, last), count in zip(frames, new_frames, strict=True):
        cond += [source[offset:first], source.new_zeros(count, source.shape[1])]
        keep += [torch.ones(first - offset, dtype=torch.bool), torch.zeros(count, dtype=torch.bool)]
        offset = last
    cond.append(source[offset:])
    keep.append(torch.ones(source.shape[0] - offset, dtype=torch.bool))
    cond_mel = torch.cat(cond).contiguous()  # [n_edited, n_mels]
    edited_s = cond_mel.shape[0] * hop / rate
    if edited_s > MAX_EDITED_S:
        raise InvalidEditError(f"the edited recording would last {edited_s:.1f} s; at most {MAX_EDITED_S} s is allowed")
    tokens = vocab.encode(new_spoken, unknown=unknown)
    if len(tokens) >= cond_mel.shape[0]:
        raise InvalidEditError(
            f"new_text has {len(tokens)} characters but the edited recording only {cond_mel.shape[0]} mel frames"
        )
    seed = seed if seed is not None else draw_seed()
    item = SampleItem(
        cond=cond_mel, text_ids=tokens, total_frames=cond_mel.shape[0], prompt_frames=0, seed=seed, keep=torch.cat(keep)
    )
    return EditPlan(
        original=original,
        item=item,
        spans=frames,
        new_frames=new_frames,
        rms_scale=rms_scale,
        seed=seed,
        duration_rule=rule,
    )


def splice_edit(plan: EditPlan, wave: np.ndarray, mel: MelConfig = DEFAULT_MEL) -> EditResult:
    """The original outside the spans, ``wave`` (the vocoded edited mel) inside them, cross-faded."""
    hop, rate = mel.hop_length, mel.target_sample_rate
    fade = int(EDIT_FADE_S * rate)
    generated = limit_peak(np.asarray(wave, dtype=np.float32) * plan.rms_scale)
    # kept runs as (original start, original end, edited start) in samples
    kept, shift, spans_out = [], 0, []
    previous_end = 0
    for (first, last), count in zip(plan.spans, plan.new_frames, strict=True):
        kept.append((previous_end * hop, first * hop, (previous_end + shift) * hop))
        spans_out.append(((first + shift) * hop / rate, (first + shift + count) * hop / rate))
        shift += count - (last - first)
        previous_end = last
    tail_start = min(previous_end * hop, len(plan.original))  # a last span may end in the last frame's hop
    kept.append((tail_start, len(plan.original), (previous_end + shift) * hop))
    out = np.zeros(kept[-1][2] + kept[-1][1] - kept[-1][0], dtype=np.float32)
    generated = np.pad(generated, (0, max(0, len(out) - len(generated))))
    out[:] = generated[: len(out)]
    for index, (start, end, at) in enumerate(kept):
        piece = plan.original[start:end].copy()
        size, last = len(piece), index == len(kept) - 1
        fade_in = min(fade, size if last else size // 2) if index > 0 else 0  # from the span before
        fade_out = 0 if last else min(fade, size - fade_in)  # into the span after
        if fade_in:
            ramp = np.linspace(0.0, 1.0, fade_in, dtype=np.float32)
            piece[:fade_in] = generated[at : at + fade_in] * (1.0 - ramp) + piece[:fade_in] * ramp
        if fade_out:
            ramp = np.linspace(0.0, 1.0, fade_out, dtype=np.float32)
            tail = generated[at + size - fade_out : at + size]
            piece[size - fade_out :] = piece[size - fade_out :] * (1.0 - ramp) + tail * ramp
        out[at : at + size] = piece
    return EditResult(audio=out, seed=plan.seed, duration_rule=plan.duration_rule, spans=spans_out, sample_rate=rate)
