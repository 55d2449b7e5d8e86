"""The two deployments: ``TTSModel`` (the synthesiser, batching requests with ``@serve.batch``) and
``TTSIngress`` (FastAPI: the native API, the OpenAI speech API, voices, health, models).

Request path: the ingress validates and decodes (size caps, base64, audio, ranges, auth), then calls
``TTSModel.synthesize`` (or ``synthesize_stream``) through a handle. On the model replica the reference
is prepared (or found in the per-replica LRU), the text planned into chunks, and the chunks' sampler rows
are handed to ``generate_batched``: ``@serve.batch`` gathers the rows of concurrent requests, and
``plan_generate_calls`` turns them into as few ``Synthesizer.generate`` calls as the frame cap allows.
Sampling runs in a worker thread so the replica's event loop keeps answering health checks.

Client mistakes found on the model replica come back as ``ClientError`` values (not exceptions), so
the ingress answers 4xx without a stack trace and the replica is untouched.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotations of the
class-based routes that ``serve.ingress`` rewrites. Module-level helpers come before the deployment
classes: Serve pickles the classes by value, capturing the globals that exist when they are defined.
"""

import asyncio
import base64
import binascii
import email.parser
import email.policy
import hashlib
import hmac
import io
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import soundfile as sf
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from flowtts.audio import AudioError, load_audio
from flowtts.model_source import ModelSource
from flowtts.synthesis import (
    EmptyTextError,
    InvalidOptionsError,
    ReferenceAudioError,
    SynthesisError,
    SynthesisOptions,
    Synthesizer,
    UnspeakableTextError,
)
from flowtts.text import UnknownCharactersError
from serve.app import BatchingSettings, ServeSettings
from serve.audio_formats import content_type, encode_audio, pcm16_bytes, streaming_wav_header
from serve.batching import GenerateWork, SamplingKey, plan_generate_calls
from serve.schemas import (
    OPENAI_MAX_INPUT_CHARS,
    DeletedVoice,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    SpeechRequest,
    TTSRequest,
    VoiceCreateRequest,
    VoiceFields,
    VoiceInfo,
    VoiceList,
)
from serve.streaming import CrossFadeJoiner
from serve.voices import LRUCache, Voice, VoiceNameTakenError, VoiceNotFoundError, VoiceStore

logger = logging.getLogger("ray.serve")

SAMPLE_RATE = 24000
WARMUP_NFE = 2
BATCH_LOG_LENGTH = 1000


# ---------------------------------------------------------------- messages between the deployments


@dataclass(frozen=True)
class ReferenceSpec:
    """A reference voice as the model replica receives it; ``key`` (a content hash) names it in the LRU."""

    key: str
    text: str
    voice_id: str | None = None  # read from the voice store on a cache miss
    audio: np.ndarray | None = None  # inline: float32 mono samples at SAMPLE_RATE


@dataclass(frozen=True)
class SynthesisJob:
    text: str
    reference: ReferenceSpec
    options: SynthesisOptions


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


@dataclass(frozen=True)
class SynthesisReply:
    audio: np.ndarray
    seed: int
    duration_rule: str
    chunks: int
    sample_rate: int
    model_version: str


# Exceptions of the model path that are the client's doing: (type, HTTP status, error code), first match wins.
CLIENT_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (VoiceNotFoundError, 404, "voice_not_found"),  # deleted between the ingress' lookup and the model's read
    (ReferenceAudioError, 422, "invalid_reference_audio"),
    (EmptyTextError, 422, "empty_text"),
    (UnspeakableTextError, 422, "unspeakable_text"),
    (UnknownCharactersError, 422, "unknown_characters"),
    (InvalidOptionsError, 422, "invalid_option"),
    (AudioError, 422, "invalid_audio"),
    (SynthesisError, 422, "invalid_request"),
)
CLIENT_EXCEPTIONS = tuple(cls for cls, _, _ in CLIENT_ERRORS)


def client_error(exc: Exception) -> ClientError:
    status, code = next((status, code) for cls, status, code in CLIENT_ERRORS if isinstance(exc, cls))
    return ClientError(status, code, str(exc))


# ---------------------------------------------------------------- the model deployment


def load_synthesizer(settings: ServeSettings, source: ModelSource) -> Synthesizer:
    """The default loader: the pinned source (a registry model is downloaded into a temporary folder that is
    removed once the weights are in memory; replicas come and go with autoscaling)."""
    return Synthesizer.from_pretrained(source, vocoder=settings.vocoder, device=settings.device)


@serve.deployment(
    name="TTSModel",
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=60,
    max_surge_percent=100,  # a model update starts the new replicas before the old ones stop
)
class TTSModel:
    def __init__(
        self,
        settings: ServeSettings,
        source: ModelSource,
        loader: Callable[[ServeSettings, ModelSource], Synthesizer] | None = None,
    ):
        self.settings = settings
        self.source = source
        self.version = source.label
        self.synth = (loader or load_synthesizer)(settings, source)
        self.voices = VoiceStore(settings.voices_uri)
        self.references: LRUCache = LRUCache(settings.reference_cache_size)
        self.max_batch_frames = settings.batching.max_batch_frames
        self.batch_log: deque[dict] = deque(maxlen=BATCH_LOG_LENGTH)
        self.needs_probe = False
        self.probe_items = self._warm_up() if settings.warmup else None
        logger.info("TTSModel ready: %s from %s", self.version, source.load_uri)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config`` = BatchingSettings fields; applied at start and on every config update."""
        batching = BatchingSettings.model_validate({**self.settings.batching.model_dump(), **(user_config or {})})
        self.generate_batched.set_max_batch_size(batching.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.max_batch_frames = batching.max_batch_frames

    # ------------------------------------------------------------ health

    def _warm_up(self) -> list:
        """A tiny synthesis from a synthetic reference; raises (the replica fails) if the model cannot run."""
        letters = [t for t in self.synth.vocab.tokens if len(t) == 1 and t.isalpha()][:6] or ["a"]
        text = "".join(letters)
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
        reference = self.synth.prepare_reference(tone, text, SAMPLE_RATE)
        plan = self.synth.plan(text, reference, SynthesisOptions(nfe=WARMUP_NFE, seed=0))
        self._run_generate(plan.items, SamplingKey(WARMUP_NFE, 2.0, -1.0, True))
        return plan.items

    async def check_health(self) -> None:
        """Serve's periodic check: after an unexpected sampling failure, the model must run a probe."""
        if self.needs_probe and self.probe_items is not None:
            await asyncio.to_thread(self._run_generate, self.probe_items, SamplingKey(WARMUP_NFE, 2.0, -1.0, True))
            self.needs_probe = False

    async def health(self) -> dict:
        await self.check_health()
        return {"model_version": self.version}

    def describe(self) -> dict:
        config = self.synth.model.config
        return {
            "name": self.source.name,
            "version": self.source.version,
            "alias": self.source.alias,
            "uri": self.source.uri,
            "run_id": self.source.run_id,
            "model_version": self.version,
            "config": {
                "backbone": config.backbone,
                "dim": config.dim,
                "depth": config.depth,
                "heads": config.heads,
                "parameters": sum(p.numel() for p in self.synth.model.parameters()),
                "vocab_size": len(self.synth.vocab),
                "sample_rate": self.synth.mel.target_sample_rate,
                "vocoder": type(self.synth.vocoder).__name__,
                "device": self.settings.device,
                "torch_threads": torch.get_num_threads(),
            },
        }

    def get_stats(self) -> dict:
        return {
            "batches": list(self.batch_log),
            "max_batch_size": self.generate_batched._get_max_batch_size(),
            "batch_wait_timeout_s": self.generate_batched._get_batch_wait_timeout_s(),
            "max_batch_frames": self.max_batch_frames,
            "reference_cache": {
                "size": len(self.references),
                "hits": self.references.hits,
                "misses": self.references.misses,
            },
        }

    # ------------------------------------------------------------ batched sampling

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batched(self, works: list[GenerateWork]) -> list[list[torch.Tensor] | Exception]:
        """One request's rows in, its mels out; concurrent requests share ``generate`` calls."""
        calls = plan_generate_calls(works, self.max_batch_frames)
        mels: list[list[Any]] = [[None] * len(work.items) for work in works]
        failures: dict[int, Exception] = {}
        for call in calls:
            try:
                outputs = await asyncio.to_thread(self._run_generate, call.items, call.key)
            except Exception as exc:  # one failing call must not fail the other requests of the batch
                logger.exception("generate failed for %d rows", len(call.items))
                self.needs_probe = True
                for work_index, _ in call.slots:
                    failures[work_index] = exc
                continue
            for (work_index, item_index), mel in zip(call.slots, outputs, strict=True):
                mels[work_index][item_index] = mel
        self.batch_log.append(
            {
                "requests": len(works),
                "calls": [
                    {"requests": c.request_count, "items": len(c.items), "padded_frames": c.padded_frames}
                    for c in calls
                ],
            }
        )
        return [failures.get(index, row) for index, row in enumerate(mels)]

    def _run_generate(self, items: list, key: SamplingKey) -> list[torch.Tensor]:
        return self.synth.generate(
            items,
            nfe=key.nfe,
            cfg_strength=key.cfg_strength,
            sway_sampling_coef=key.sway_sampling_coef,
            use_epss=key.use_epss,
        )

    async def _generate(self, items: list, options: SynthesisOptions) -> list[torch.Tensor]:
        key = SamplingKey(options.nfe, options.cfg_strength, options.sway_sampling_coef, options.use_epss)
        result = await self.generate_batched(GenerateWork(tuple(items), key))
        if isinstance(result, Exception):
            raise result
        return result

    # ------------------------------------------------------------ requests

    async def _reference(self, spec: ReferenceSpec):
        reference = self.references.get(spec.key)
        if reference is None:
            reference = await asyncio.to_thread(self._prepare_reference, spec)
            self.references.put(spec.key, reference)
        return reference

    def _prepare_reference(self, spec: ReferenceSpec):
        audio = spec.audio
        if audio is None:
            voice = self.voices.get(spec.voice_id)
            audio, rate = sf.read(io.BytesIO(self.voices.read_audio(voice)), dtype="float32")
            if rate != SAMPLE_RATE:
                raise ReferenceAudioError(f"stored voice {voice.id} has rate {rate}, expected {SAMPLE_RATE}")
        return self.synth.prepare_reference(audio, spec.text, SAMPLE_RATE)

    async def _plan(self, job: SynthesisJob):
        reference = await self._reference(job.reference)
        return await asyncio.to_thread(self.synth.plan, job.text, reference, job.options)

    async def check_reference(self, spec: ReferenceSpec) -> ClientError | None:
        """Prepare (and cache) a reference; a ClientError says why it cannot be used."""
        try:
            await self._reference(spec)
        except CLIENT_EXCEPTIONS as exc:
            return client_error(exc)
        return None

    async def synthesize(self, job: SynthesisJob) -> SynthesisReply | ClientError:
        try:
            plan = await self._plan(job)
        except CLIENT_EXCEPTIONS as exc:
            return client_error(exc)
        mels = await self._generate(plan.items, job.options)
        result = await asyncio.to_thread(self.synth.render, plan, mels)
        return SynthesisReply(
            audio=result.audio,
            seed=result.seed,
            duration_rule=result.duration_rule,
            chunks=len(result.chunks),
            sample_rate=result.sample_rate,
            model_version=self.version,
        )

    async def synthesize_stream(self, job: SynthesisJob) -> AsyncIterator[StreamStart | ClientError | np.ndarray]:
        """A StreamStart (or a ClientError, then nothing), then each chunk's audio as soon as it is ready."""
        try:
            plan = await self._plan(job)
        except CLIENT_EXCEPTIONS as exc:
            yield client_error(exc)
            return
        yield StreamStart(
            seed=plan.seed,
            duration_rule=plan.duration_rule,
            chunks=len(plan.items),
            sample_rate=self.synth.mel.target_sample_rate,
            model_version=self.version,
        )
        joiner = CrossFadeJoiner(self.synth.mel.target_sample_rate)
        for item in plan.items:
            (mel,) = await self._generate([item], job.options)
            (wave,) = await asyncio.to_thread(self.synth.vocode, [mel])
            yield joiner.push(wave * plan.reference.rms_scale)
        yield joiner.finish()


# ---------------------------------------------------------------- HTTP errors


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "overloaded",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


api = FastAPI(title="flowtts", description="F5-TTS serving: native and OpenAI-compatible speech API")


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(
        exc.status_code,
        HTTP_ERROR_CODES.get(exc.status_code, "http_error"),
        str(exc.detail),
        getattr(exc, "headers", None),
    )


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_request", validation_message(list(exc.errors())))


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error")
    return error_response(500, "internal_error", f"{type(exc).__name__}: the server could not complete the request")


def json_body_schema(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse_model(model: type[BaseModel], body: bytes) -> Any:
    """JSON bytes -> pydantic model: 400 for malformed JSON, 422 for a body that does not fit."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    return validate_model(model, data)


def validate_model(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc.errors())) from exc


def decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "malformed_base64", f"{field} is not valid base64: {exc}") from exc


def parse_multipart(content_type_header: str, body: bytes) -> dict[str, bytes]:
    """``multipart/form-data`` fields by name (stdlib MIME parser; no extra dependency)."""
    head = f"Content-Type: {content_type_header}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ApiError(400, "malformed_multipart", "multipart body could not be parsed (check the boundary)")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


def overloaded(exc: BackPressureError) -> ApiError:
    """503 (or 429 with ``backpressure_config``) and always a ``Retry-After`` (1 s unless configured)."""
    retry_after = max(1, int(np.ceil(exc.retry_after_s or 1)))
    return ApiError(
        exc.status_code,
        "overloaded",
        f"the server is busy: {exc.message}; retry later",
        {"Retry-After": str(retry_after)},
    )


def _audio_headers(reply: SynthesisReply | StreamStart) -> dict[str, str]:
    return {
        "X-Model-Version": reply.model_version,
        "X-Seed": str(reply.seed),
        "X-Duration-Rule": reply.duration_rule,
        "X-Chunks": str(reply.chunks),
        "X-Sample-Rate": str(reply.sample_rate),
    }


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- the ingress deployment


@serve.deployment(
    name="TTSIngress", max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.25}, max_surge_percent=100
)
@serve.ingress(api)
class TTSIngress:
    def __init__(self, settings: ServeSettings, model: DeploymentHandle):
        self.settings = settings
        self.limits = settings.limits
        self.model = model
        self.stream_model = model.options(stream=True)
        self.voices = VoiceStore(settings.voices_uri)
        self.api_key = settings.api_key.get_secret_value() if settings.api_key else None

    # ------------------------------------------------------------ plumbing

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <key>)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def _read_body(self, request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if declared is not None and int(declared) > limit:
            raise ApiError(413, "payload_too_large", f"request body of {declared} bytes exceeds {limit} bytes")
        size, parts = 0, []
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
            parts.append(part)
        return b"".join(parts)

    def _json_limit(self) -> int:
        return self.limits.max_upload_bytes * 4 // 3 + 4 * self.limits.max_text_chars + 65536

    async def _call(self, method: str, *args) -> Any:
        try:
            return await getattr(self.model, method).remote(*args)
        except BackPressureError as exc:
            raise overloaded(exc) from exc

    # ------------------------------------------------------------ requests -> jobs

    def _check_text(self, text: str, limit: int) -> None:
        if len(text) > limit:
            raise ApiError(413, "text_too_long", f"text has {len(text)} characters; the limit is {limit}")

    def _options(
        self, nfe: int | None, cfg: float | None, sway: float | None, speed: float | None, seed: int | None
    ) -> SynthesisOptions:
        nfe = self.settings.default_nfe if nfe is None else nfe
        speed = 1.0 if speed is None else speed
        low, high = self.limits.nfe_range
        if not low <= nfe <= high:
            raise ApiError(422, "invalid_option", f"nfe={nfe} is outside the allowed range [{low}, {high}]")
        low, high = self.limits.speed_range
        if not low <= speed <= high:
            raise ApiError(422, "invalid_option", f"speed={speed} is outside the allowed range [{low}, {high}]")
        return SynthesisOptions(
            nfe=nfe,
            speed=speed,
            seed=seed,
            cfg_strength=self.settings.default_cfg_strength if cfg is None else cfg,
            sway_sampling_coef=self.settings.default_sway_sampling_coef if sway is None else sway,
        )

    def _decode_reference_audio(self, data: bytes) -> np.ndarray:
        if len(data) > self.limits.max_upload_bytes:
            raise ApiError(
                413,
                "upload_too_large",
                f"reference audio of {len(data)} bytes exceeds {self.limits.max_upload_bytes} bytes",
            )
        try:
            audio = load_audio(data, SAMPLE_RATE).numpy()
        except AudioError as exc:
            raise ApiError(422, "invalid_audio", f"reference audio is not readable audio: {exc}") from exc
        seconds = len(audio) / SAMPLE_RATE
        if seconds > self.limits.max_reference_seconds:
            raise ApiError(
                413,
                "reference_too_long",
                f"reference audio lasts {seconds:.1f} s; the limit is {self.limits.max_reference_seconds} s",
            )
        return audio

    async def _voice(self, id_or_name: str) -> Voice:
        try:
            return await asyncio.to_thread(self.voices.lookup, id_or_name)
        except VoiceNotFoundError as exc:
            raise ApiError(404, "voice_not_found", str(exc)) from exc

    async def _voice_reference(self, id_or_name: str) -> ReferenceSpec:
        voice = await self._voice(id_or_name)
        return ReferenceSpec(key=f"{voice.id}:{voice.audio_sha256}", text=voice.transcript, voice_id=voice.id)

    def _inline_reference(self, ref_audio: str, ref_text: str) -> ReferenceSpec:
        data = decode_base64(ref_audio, "ref_audio")
        audio = self._decode_reference_audio(data)
        key = hashlib.sha256(data + b"\0" + ref_text.encode("utf-8")).hexdigest()
        return ReferenceSpec(key=f"inline:{key}", text=ref_text, audio=audio)

    # ------------------------------------------------------------ running jobs

    async def _synthesize(self, job: SynthesisJob, fmt: str) -> Response:
        reply = await self._call("synthesize", job)
        if isinstance(reply, ClientError):
            raise ApiError(reply.status, reply.code, reply.message)
        audio = await asyncio.to_thread(encode_audio, reply.audio, reply.sample_rate, fmt)
        return Response(audio, media_type=content_type(fmt), headers=_audio_headers(reply))

    async def _open_stream(self, job: SynthesisJob):
        """Start a streamed synthesis; the first item (start or client error) decides the status."""
        stream = self.stream_model.synthesize_stream.remote(job)
        try:
            first = await stream.__anext__()
        except BackPressureError as exc:
            raise overloaded(exc) from exc
        if isinstance(first, ClientError):
            stream.cancel()
            raise ApiError(first.status, first.code, first.message)
        return first, stream

    async def _stream(self, job: SynthesisJob, fmt: str) -> StreamingResponse:
        start, stream = await self._open_stream(job)

        async def body() -> AsyncIterator[bytes]:
            if fmt == "wav":
                yield streaming_wav_header(start.sample_rate)
            async for samples in stream:
                if len(samples):
                    yield pcm16_bytes(samples)

        return StreamingResponse(body(), media_type=content_type(fmt), headers=_audio_headers(start))

    async def _stream_sse(self, job: SynthesisJob, fmt: str, input_chars: int) -> StreamingResponse:
        """OpenAI's ``stream_format=sse``: ``speech.audio.delta`` events, then ``speech.audio.done``."""
        start, stream = await self._open_stream(job)
        streamable = fmt in ("wav", "pcm")

        async def events() -> AsyncIterator[bytes]:
            collected = []
            if fmt == "wav":
                yield _sse({"type": "speech.audio.delta", "audio": _b64(streaming_wav_header(start.sample_rate))})
            async for samples in stream:
                if not streamable:
                    collected.append(samples)
                elif len(samples):
                    yield _sse({"type": "speech.audio.delta", "audio": _b64(pcm16_bytes(samples))})
            if not streamable:
                audio = np.concatenate(collected) if collected else np.zeros(0, dtype=np.float32)
                encoded = await asyncio.to_thread(encode_audio, audio, start.sample_rate, fmt)
                yield _sse({"type": "speech.audio.delta", "audio": _b64(encoded)})
            yield _sse(
                {
                    "type": "speech.audio.done",
                    "usage": {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars},
                }
            )

        return StreamingResponse(events(), media_type="text/event-stream", headers=_audio_headers(start))

    # ------------------------------------------------------------ routes: synthesis

    @api.post(
        "/v1/tts",
        response_class=Response,
        openapi_extra=json_body_schema(TTSRequest),
        responses={
            200: {"content": {"audio/wav": {}}},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
    )
    async def tts(self, request: Request) -> Response:
        """Synthesise ``text`` in a stored or inline voice; audio bytes in ``response_format``."""
        self._authorize(request)
        req: TTSRequest = parse_model(TTSRequest, await self._read_body(request, self._json_limit()))
        self._check_text(req.text, self.limits.max_text_chars)
        options = self._options(req.nfe, req.cfg_strength, req.sway_sampling_coef, req.speed, req.seed)
        if req.voice is not None:
            reference = await self._voice_reference(req.voice)
        else:
            reference = self._inline_reference(req.ref_audio, req.ref_text)
        job = SynthesisJob(text=req.text, reference=reference, options=options)
        if req.stream:
            return await self._stream(job, req.response_format)
        return await self._synthesize(job, req.response_format)

    @api.post(
        "/v1/audio/speech",
        response_class=Response,
        openapi_extra=json_body_schema(SpeechRequest),
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorResponse}},
    )
    async def speech(self, request: Request) -> Response:
        """OpenAI-compatible speech: ``voice`` is a stored voice id or name; audio is streamed (wav and pcm
        chunk by chunk as each text chunk is ready, other formats once encoded); ``stream_format=sse``
        sends OpenAI's ``speech.audio.delta``/``speech.audio.done`` events."""
        self._authorize(request)
        req: SpeechRequest = parse_model(SpeechRequest, await self._read_body(request, self._json_limit()))
        self._check_text(req.input, min(OPENAI_MAX_INPUT_CHARS, self.limits.max_text_chars))
        if req.response_format == "aac":
            raise ApiError(
                422,
                "unsupported_format",
                "response_format 'aac' is not supported; use mp3, opus, flac, wav or pcm",
            )
        options = self._options(None, None, None, req.speed, req.seed)
        job = SynthesisJob(text=req.input, reference=await self._voice_reference(req.voice_key), options=options)
        if req.stream_format == "sse":
            return await self._stream_sse(job, req.response_format, len(req.input))
        if req.response_format in ("wav", "pcm"):
            return await self._stream(job, req.response_format)
        return await self._synthesize(job, req.response_format)

    # ------------------------------------------------------------ routes: voices

    @api.post(
        "/v1/voices",
        status_code=201,
        response_model=VoiceInfo,
        openapi_extra=json_body_schema(VoiceCreateRequest),
    )
    async def create_voice(self, request: Request) -> VoiceInfo:
        """Store a voice: JSON (``audio`` base64, ``transcript``, ``name``) or multipart/form-data
        (``audio`` file, ``transcript``, ``name``)."""
        self._authorize(request)
        body = await self._read_body(request, self._json_limit())
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            fields = parse_multipart(kind, body)
            form = {key: fields[key].decode("utf-8", "replace") for key in ("transcript", "name") if key in fields}
            if "audio" not in fields:
                raise ApiError(422, "invalid_request", "audio: field required (a file part named 'audio')")
            req = validate_model(VoiceFields, form)
            data = fields["audio"]
        else:
            req = parse_model(VoiceCreateRequest, body)
            data = decode_base64(req.audio, "audio")
        audio = self._decode_reference_audio(data)
        spec = ReferenceSpec(
            key="upload:" + hashlib.sha256(data + req.transcript.encode()).hexdigest(),
            text=req.transcript,
            audio=audio,
        )
        problem = await self._call("check_reference", spec)
        if problem is not None:
            raise ApiError(problem.status, problem.code, problem.message)
        try:
            voice = await asyncio.to_thread(self.voices.create, audio, SAMPLE_RATE, req.transcript, req.name)
        except VoiceNameTakenError as exc:
            raise ApiError(409, "voice_name_taken", str(exc)) from exc
        return VoiceInfo.model_validate(asdict(voice))

    @api.get("/v1/voices", response_model=VoiceList)
    async def list_voices(self, request: Request) -> VoiceList:
        self._authorize(request)
        voices = await asyncio.to_thread(self.voices.list)
        return VoiceList(voices=[VoiceInfo.model_validate(asdict(v)) for v in voices])

    @api.get("/v1/voices/{voice_id}", response_model=VoiceInfo)
    async def get_voice(self, voice_id: str, request: Request) -> VoiceInfo:
        self._authorize(request)
        return VoiceInfo.model_validate(asdict(await self._voice(voice_id)))

    @api.delete("/v1/voices/{voice_id}", response_model=DeletedVoice)
    async def delete_voice(self, voice_id: str, request: Request) -> DeletedVoice:
        self._authorize(request)
        voice = await self._voice(voice_id)
        try:
            await asyncio.to_thread(self.voices.delete, voice.id)
        except VoiceNotFoundError as exc:
            raise ApiError(404, "voice_not_found", str(exc)) from exc
        return DeletedVoice(id=voice.id)

    # ------------------------------------------------------------ routes: health and models

    @api.get("/healthz", response_model=Health, responses={503: {"model": ErrorResponse}})
    async def healthz(self) -> Health:
        """200 when a model replica answers and its model runs; 503 otherwise."""
        try:
            state = await asyncio.wait_for(self._call("health"), timeout=30)
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(503, "unhealthy", f"the model cannot serve: {type(exc).__name__}: {exc}") from exc
        return Health(model_version=state["model_version"])

    @api.get("/v1/models", response_model=ModelList)
    async def models(self, request: Request) -> ModelList:
        self._authorize(request)
        info = await self._call("describe")
        card = ModelCard(
            id=info["model_version"],
            created=int(time.time()),
            name=info["name"],
            version=info["version"],
            alias=info["alias"],
            uri=info["uri"],
            run_id=info["run_id"],
            config=info["config"],
        )
        return ModelList(data=[card])
