"""Several voices in one text: ``[name]`` tags switch the voice, as upstream's ``infer_cli`` does.

Syntax: ``[name]`` switches to the voice called ``name`` (a stored voice's name or id over HTTP, a
``--voice NAME=...`` on the CLI, a key of ``voices=`` in Python) until the next tag; ``[name speed=1.2]``
also sets that segment's speed; ``[main]`` returns to the request's own voice, which also speaks any text
before the first tag. Names are letters, digits, ``_ . -`` and spaces; brackets holding anything else
are left in the text.

Each segment is planned as a request of its own (front end, chunks, durations) with its own reference;
the chunks keep one seed sequence across segments (chunk ``i`` of the whole text has seed ``s + i``), so
a segment sampled here equals the same segment synthesised alone with its first chunk's seed. All chunks
of all segments are sampled together; each segment is rendered as it would be alone (vocoder, loudness,
cross-fades, silence removal, peak limit) and the segments are joined with the same cross-fade.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from flowtts.synthesis.errors import EmptyTextError, InvalidOptionsError, SynthesisError
from flowtts.synthesis.planning import SynthesisOptions, SynthesisPlan, draw_seed
from flowtts.synthesis.reference import Reference

MAIN_VOICE = "main"
VOICE_TAG = re.compile(r"\[(?P<name>[\w.\- ]+?)(?:\s+speed=(?P<speed>\d+(?:\.\d+)?))?\]")


class UnknownVoiceError(SynthesisError, LookupError):
    """A ``[name]`` tag names no voice; ``names`` lists every unknown one."""

    def __init__(self, message: str, names: tuple[str, ...] = ()):
        super().__init__(message)
        self.names = tuple(names)

    def __reduce__(self):
        return (type(self), (str(self), self.names))


@dataclass(frozen=True)
class Segment:
    voice: str | None  # None: the request's own voice
    text: str
    speed: float | None = None  # None: the request's speed


def split_voice_tags(text: str) -> list[Segment]:
    """The text's segments in order; one segment in the request's voice when it has no tag."""
    segments: list[Segment] = []
    voice: str | None = None
    speed: float | None = None
    position = 0
    for tag in VOICE_TAG.finditer(text):
        _add(segments, voice, text[position : tag.start()], speed)
        name = tag["name"].strip()
        voice = None if name == MAIN_VOICE else name
        speed = float(tag["speed"]) if tag["speed"] else None
        position = tag.end()
    _add(segments, voice, text[position:], speed)
    if not segments:
        raise EmptyTextError(f"text {text[:80]!r} has nothing to say outside its voice tags")
    return segments


def _add(segments: list[Segment], voice: str | None, text: str, speed: float | None) -> None:
    if text.strip():
        segments.append(Segment(voice, text.strip(), speed))


def voice_names(text: str) -> list[str]:
    """The distinct voice names the text's tags ask for (``main`` excluded), in order of appearance."""
    return list(dict.fromkeys(s.voice for s in split_voice_tags(text) if s.voice is not None))


@dataclass
class VoicedPlan:
    """A text's segments, each planned with its voice; ``items`` are all of their sampler rows."""

    segments: list[SynthesisPlan]
    seed: int

    @property
    def items(self) -> list:
        return [item for plan in self.segments for item in plan.items]

    @property
    def duration_rule(self) -> str:
        return self.segments[0].duration_rule

    def locate(self, index: int) -> tuple[SynthesisPlan, int]:
        """The segment holding chunk ``index`` of the whole text, and the chunk's index in it."""
        offset = index
        for plan in self.segments:
            if 0 <= offset < len(plan.items):
                return plan, offset
            offset -= len(plan.items)
        raise IndexError(f"chunk {index} is outside the plan's {len(self.items)} chunks")


def plan_voices(
    text: str,
    reference: Reference | None,
    options: SynthesisOptions,
    voices: Mapping[str, Reference],
    plan_segment,
) -> VoicedPlan:
    """Split on tags and plan each segment with ``plan_segment(text, reference, options)``."""
    segments = split_voice_tags(text)
    unknown = tuple(dict.fromkeys(s.voice for s in segments if s.voice is not None and s.voice not in voices))
    if unknown:
        known = ", ".join(sorted(voices)) or "none"
        raise UnknownVoiceError(
            f"voice tag(s) {', '.join(f'[{name}]' for name in unknown)} name no voice (known: {known})", unknown
        )
    if reference is None and any(s.voice is None for s in segments):
        raise EmptyTextError("text outside a voice tag needs the request's own reference voice")
    if len(segments) > 1 and options.fix_duration is not None:
        raise InvalidOptionsError("fix_duration applies to one voice; it cannot be used with voice tags")
    seed = options.seed if options.seed is not None else draw_seed()
    plans = []
    for segment in segments:
        speed = segment.speed if segment.speed is not None else options.speed
        voice = reference if segment.voice is None else voices[segment.voice]
        offset = sum(len(plan.items) for plan in plans)
        lead = options.first_chunk_bytes if not plans else None  # a stream's short first chunk: once
        options_here = replace(options, seed=seed + offset, speed=speed, first_chunk_bytes=lead)
        plans.append(plan_segment(segment.text, voice, options_here))
    return VoicedPlan(segments=plans, seed=seed)
