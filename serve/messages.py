"""What the ingress and the model replicas send each other (pickled by Ray; plain frozen dataclasses): the
arguments and replies of ``TTSModel``'s methods, which ``serve.model_client.ModelClient`` calls.

Client mistakes found on the model replica come back as ``ClientError`` values (not exceptions), so the
ingress answers 4xx without a stack trace and the replica is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowtts.audio import AudioError
from flowtts.synthesis import (
    TARGET_RMS,
    ChunkChoice,
    EmptyTextError,
    InvalidEditError,
    InvalidOptionsError,
    JudgeRequiredError,
    ReferenceAudioError,
    SamplingSettings,
    SynthesisError,
    SynthesisOptions,
    TranscriptRequiredError,
    UnknownVoiceError,
    UnspeakableTextError,
)
from flowtts.text import UnknownCharactersError
from flowtts.voices import VoiceNotFoundError

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
    field: str | None = None  # what it is about, as /v1/voices and /v1/edit name it: audio, transcript, text, ...


@dataclass(frozen=True)
class StreamStart:
    """First item of a streamed synthesis; audio chunks (float32 arrays) follow."""

    seed: int
    duration_rule: str
    chunks: int
    sample_rate: int
    model_version: str
    ref_text: str | None = None  # what the ASR model heard, when the reference came without a transcript
    candidates: int = 1  # candidates per chunk (a stream chooses chunk by chunk; no scores in its headers)


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
    candidates: int = 1  # candidates per chunk
    choices: tuple[ChunkChoice, ...] = ()  # with candidates > 1: each chunk's scores and the kept one


@dataclass(frozen=True)
class ReplicaHealth:
    """``TTSModel.health``: the replica can sample (it ran its probe after a sampling failure)."""

    model_version: str


@dataclass(frozen=True)
class ModelConfigSummary:
    """The served model's architecture and how the replica runs it (``GET /v1/models``' ``config``)."""

    backbone: str
    dim: int
    depth: int
    heads: int
    parameters: int
    vocab_size: int
    text_frontend: dict[str, Any] | None
    asr_model: str | None
    judges: dict[str, Any] | None  # the re-ranking judges loaded on the replica: asr_model, speaker_model, device
    sample_rate: int
    vocoder: str
    device: str
    backend: str
    torch_threads: int


@dataclass(frozen=True)
class ModelDescription:
    """``TTSModel.describe``: where the served model comes from, and its config."""

    name: str
    version: str | None
    alias: str | None
    uri: str
    run_id: str | None
    model_version: str
    config: ModelConfigSummary


# Exceptions of the model path that are the client's doing: (type, HTTP status, error code, field), first match
# wins; the field as ClientError names it.
CLIENT_ERRORS: tuple[tuple[type[Exception], int, str, str | None], ...] = (
    (VoiceNotFoundError, 404, "voice_not_found", "voice"),  # deleted between the ingress' lookup and the model's read
    (UnknownVoiceError, 404, "voice_not_found", "text"),  # a [name] tag the ingress did not resolve
    (ReferenceAudioError, 422, "invalid_reference_audio", "audio"),
    (TranscriptRequiredError, 422, "transcript_required", "transcript"),
    (EmptyTextError, 422, "empty_text", "text"),
    (UnspeakableTextError, 422, "unspeakable_text", "text"),
    (UnknownCharactersError, 422, "unknown_characters", "text"),
    (JudgeRequiredError, 422, "judge_required", "candidates"),  # the ingress checks first, from the settings
    (InvalidOptionsError, 422, "invalid_option", None),  # the message names the option
    (InvalidEditError, 422, "invalid_edit", "spans"),
    (AudioError, 422, "invalid_audio", "audio"),
    (SynthesisError, 422, "invalid_request", None),
)
CLIENT_EXCEPTIONS = tuple(row[0] for row in CLIENT_ERRORS)


def client_error(exc: Exception) -> ClientError:
    status, code, field = next((s, c, f) for cls, s, c, f in CLIENT_ERRORS if isinstance(exc, cls))
    return ClientError(status, code, str(exc), field)
