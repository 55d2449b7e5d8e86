"""What the ingress and the model replicas send each other (pickled by Ray; plain frozen dataclasses).

Client mistakes found on the model replica come back as ``ClientError`` values (not exceptions), so the
ingress answers 4xx without a stack trace and the replica is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowtts.audio import AudioError
from flowtts.synthesis import (
    TARGET_RMS,
    EmptyTextError,
    InvalidEditError,
    InvalidOptionsError,
    ReferenceAudioError,
    SamplingSettings,
    SynthesisError,
    SynthesisOptions,
    TranscriptRequiredError,
    UnknownVoiceError,
    UnspeakableTextError,
)
from flowtts.text import UnknownCharactersError
from serve.voices import VoiceNotFoundError

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class ReferenceSpec:
    """A reference voice as the model replica receives it; ``key`` (a content hash) names it in the LRU."""

    key: str
    text: str
    voice_id: str | None = None  # read from the voice store on a cache miss
    audio: np.ndarray | None = None  # inline: float32 mono samples at SAMPLE_RATE
    target_rms: float = TARGET_RMS  # a quieter reference is raised to it (part of the cache key)


@dataclass(frozen=True)
class SynthesisJob:
    text: str
    reference: ReferenceSpec
    options: SynthesisOptions
    voices: tuple[tuple[str, ReferenceSpec], ...] = ()  # the reference of each [name] tag of the text


@dataclass(frozen=True)
class EditJob:
    """A speech edit (``Synthesizer.plan_edit``'s arguments); spans and durations are checked on the replica."""

    audio: np.ndarray  # float32 mono samples at SAMPLE_RATE
    text: str
    new_text: str
    spans: tuple[tuple[float, ...], ...]
    durations: tuple[float, ...] | None
    sampling: SamplingSettings
    seed: int | None
    target_rms: float = TARGET_RMS


@dataclass(frozen=True)
class ClientError:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class StreamStart:
    """First item of a streamed synthesis; audio chunks (float32 arrays) follow."""

    seed: int
    duration_rule: str
    chunks: int
    sample_rate: int
    model_version: str
    ref_text: str | None = None  # what the ASR model heard, when the reference came without a transcript


@dataclass(frozen=True)
class SynthesisReply:
    audio: np.ndarray
    seed: int
    duration_rule: str
    chunks: int
    sample_rate: int
    model_version: str
    ref_text: str | None = None  # what the ASR model heard, when the reference came without a transcript
    edited_spans: tuple[tuple[float, float], ...] = ()  # an edit's regenerated spans, seconds in ``audio``


# Exceptions of the model path that are the client's doing: (type, HTTP status, error code), first match wins.
CLIENT_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (VoiceNotFoundError, 404, "voice_not_found"),  # deleted between the ingress' lookup and the model's read
    (UnknownVoiceError, 404, "voice_not_found"),  # a [name] tag the ingress did not resolve
    (ReferenceAudioError, 422, "invalid_reference_audio"),
    (TranscriptRequiredError, 422, "transcript_required"),
    (EmptyTextError, 422, "empty_text"),
    (UnspeakableTextError, 422, "unspeakable_text"),
    (UnknownCharactersError, 422, "unknown_characters"),
    (InvalidOptionsError, 422, "invalid_option"),
    (InvalidEditError, 422, "invalid_edit"),
    (AudioError, 422, "invalid_audio"),
    (SynthesisError, 422, "invalid_request"),
)
CLIENT_EXCEPTIONS = tuple(cls for cls, _, _ in CLIENT_ERRORS)


def client_error(exc: Exception) -> ClientError:
    status, code = next((status, code) for cls, status, code in CLIENT_ERRORS if isinstance(exc, cls))
    return ClientError(status, code, str(exc))
