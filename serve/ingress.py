"""The ingress deployment: ``TTSIngress`` (FastAPI) with the native API, the OpenAI speech API, voices,
health and models; the studio page and the routes only it needs come from ``serve.studio_routes``.

Request path: the ingress validates and decodes (size caps, base64, audio, ranges; auth is a route
dependency), then calls ``TTSModel.synthesize`` (or ``synthesize_stream``) through a handle; a
``ClientError`` reply becomes a 4xx answer.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` annotations of the
class-based routes that ``serve.ingress`` rewrites.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from flowtts.synthesis import SynthesisOptions
from serve.audio_formats import content_type, encode_audio
from serve.http_layer import (
    AUTHORIZED,
    ApiError,
    audio_headers,
    audio_stream,
    check_text_length,
    decode_base64,
    decode_reference_audio,
    install_error_handlers,
    json_body_schema,
    overloaded,
    parse_model,
    parse_multipart,
    read_body,
    speech_events,
    validate_model,
)
from serve.messages import SAMPLE_RATE, ClientError, ReferenceSpec, SynthesisJob
from serve.references import inline_reference, lookup_voice, stored_reference, tag_references
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
from serve.settings import ServeSettings
from serve.studio_routes import router as studio_router
from serve.training_jobs import TrainingJobs
from serve.voices import Voice, VoiceNameTakenError, VoiceNotFoundError, VoiceStore

logger = logging.getLogger("ray.serve")

api = FastAPI(title="flowtts", description="F5-TTS serving: native and OpenAI-compatible speech API")
install_error_handlers(api)
api.include_router(studio_router)  # the studio page and the routes only it needs


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
        self.training = TrainingJobs(settings.training, settings.tracking_uri) if settings.training.enabled else None

    # ------------------------------------------------------------ plumbing

    def _json_limit(self) -> int:
        return self.limits.max_upload_bytes * 4 // 3 + 4 * self.limits.max_text_chars + 65536

    async def _call(self, method: str, *args) -> Any:
        try:
            return await getattr(self.model, method).remote(*args)
        except BackPressureError as exc:
            raise overloaded(exc) from exc

    # ------------------------------------------------------------ requests -> jobs

    def _options(
        self, nfe: int | None, cfg: float | None, sway: float | None, speed: float | None, seed: int | None
    ) -> SynthesisOptions:
        given = {"nfe": nfe, "cfg_strength": cfg, "sway_sampling_coef": sway}
        speed = 1.0 if speed is None else speed
        low, high = self.limits.nfe_range
        if nfe is not None and not low <= nfe <= high:
            raise ApiError(422, "invalid_option", f"nfe={nfe} is outside the allowed range [{low}, {high}]")
        sampling = replace(self.settings.default_sampling, **{k: v for k, v in given.items() if v is not None})
        low, high = self.limits.speed_range
        if not low <= speed <= high:
            raise ApiError(422, "invalid_option", f"speed={speed} is outside the allowed range [{low}, {high}]")
        return SynthesisOptions(sampling=sampling, speed=speed, seed=seed)

    async def _voice(self, id_or_name: str) -> Voice:
        return await lookup_voice(self.voices, id_or_name)

    async def _voice_reference(self, id_or_name: str) -> ReferenceSpec:
        return stored_reference(await self._voice(id_or_name))

    def _inline_reference(self, ref_audio: str, ref_text: str) -> ReferenceSpec:
        data = decode_base64(ref_audio, "ref_audio")
        return inline_reference(data, decode_reference_audio(data, self.limits), ref_text)

    async def _job(self, text: str, reference: ReferenceSpec, options: SynthesisOptions) -> SynthesisJob:
        """A job with the stored voice of every ``[name]`` tag of ``text``."""
        return SynthesisJob(text, reference, options, await tag_references(self.voices, text, self.limits))

    # ------------------------------------------------------------ running jobs

    async def _synthesize(self, job: SynthesisJob, fmt: str) -> Response:
        reply = await self._call("synthesize", job)
        if isinstance(reply, ClientError):
            raise ApiError(reply.status, reply.code, reply.message)
        audio = await asyncio.to_thread(encode_audio, reply.audio, reply.sample_rate, fmt)
        return Response(audio, media_type=content_type(fmt), headers=audio_headers(reply))

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
        return StreamingResponse(
            audio_stream(start, stream, fmt), media_type=content_type(fmt), headers=audio_headers(start)
        )

    async def _stream_sse(self, job: SynthesisJob, fmt: str, input_chars: int) -> StreamingResponse:
        start, stream = await self._open_stream(job)
        return StreamingResponse(
            speech_events(start, stream, fmt, input_chars), media_type="text/event-stream", headers=audio_headers(start)
        )

    # ------------------------------------------------------------ routes: synthesis

    @api.post(
        "/v1/tts",
        dependencies=AUTHORIZED,
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
        req: TTSRequest = parse_model(TTSRequest, await read_body(request, self._json_limit()))
        check_text_length(req.text, self.limits.max_text_chars)
        options = self._options(req.nfe, req.cfg_strength, req.sway_sampling_coef, req.speed, req.seed)
        if req.voice is not None:
            reference = await self._voice_reference(req.voice)
        else:
            reference = self._inline_reference(req.ref_audio, req.ref_text or "")
        job = await self._job(req.text, reference, options)
        if req.stream:
            return await self._stream(job, req.response_format)
        return await self._synthesize(job, req.response_format)

    @api.post(
        "/v1/audio/speech",
        dependencies=AUTHORIZED,
        response_class=Response,
        openapi_extra=json_body_schema(SpeechRequest),
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorResponse}},
    )
    async def speech(self, request: Request) -> Response:
        """OpenAI-compatible speech: ``voice`` is a stored voice id or name; audio is streamed (wav and pcm
        chunk by chunk as each text chunk is ready, other formats once encoded); ``stream_format=sse``
        sends OpenAI's ``speech.audio.delta``/``speech.audio.done`` events."""
        req: SpeechRequest = parse_model(SpeechRequest, await read_body(request, self._json_limit()))
        check_text_length(req.input, min(OPENAI_MAX_INPUT_CHARS, self.limits.max_text_chars))
        if req.response_format == "aac":
            raise ApiError(
                422,
                "unsupported_format",
                "response_format 'aac' is not supported; use mp3, opus, flac, wav or pcm",
            )
        options = self._options(None, None, None, req.speed, req.seed)
        job = await self._job(req.input, await self._voice_reference(req.voice_key), options)
        if req.stream_format == "sse":
            return await self._stream_sse(job, req.response_format, len(req.input))
        if req.response_format in ("wav", "pcm"):
            return await self._stream(job, req.response_format)
        return await self._synthesize(job, req.response_format)

    # ------------------------------------------------------------ routes: voices

    @api.post(
        "/v1/voices",
        dependencies=AUTHORIZED,
        status_code=201,
        response_model=VoiceInfo,
        openapi_extra=json_body_schema(VoiceCreateRequest),
    )
    async def create_voice(self, request: Request) -> VoiceInfo:
        """Store a voice: JSON (``audio`` base64, ``transcript``, ``name``) or multipart/form-data
        (``audio`` file, ``transcript``, ``name``)."""
        body = await read_body(request, self._json_limit())
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
        audio = decode_reference_audio(data, self.limits)
        spec = ReferenceSpec(
            key="upload:" + hashlib.sha256(data + req.transcript.encode()).hexdigest(),
            text=req.transcript,
            audio=audio,
        )
        transcript = await self._call("check_reference", spec)
        if isinstance(transcript, ClientError):
            raise ApiError(transcript.status, transcript.code, transcript.message)
        try:
            voice = await asyncio.to_thread(self.voices.create, audio, SAMPLE_RATE, transcript, req.name)
        except VoiceNameTakenError as exc:
            raise ApiError(409, "voice_name_taken", str(exc)) from exc
        return VoiceInfo.model_validate(asdict(voice))

    @api.get("/v1/voices", response_model=VoiceList, dependencies=AUTHORIZED)
    async def list_voices(self) -> VoiceList:
        voices = await asyncio.to_thread(self.voices.list)
        return VoiceList(voices=[VoiceInfo.model_validate(asdict(v)) for v in voices])

    @api.get("/v1/voices/{voice_id}", response_model=VoiceInfo, dependencies=AUTHORIZED)
    async def get_voice(self, voice_id: str) -> VoiceInfo:
        return VoiceInfo.model_validate(asdict(await self._voice(voice_id)))

    @api.delete("/v1/voices/{voice_id}", response_model=DeletedVoice, dependencies=AUTHORIZED)
    async def delete_voice(self, voice_id: str) -> DeletedVoice:
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

    @api.get("/v1/models", response_model=ModelList, dependencies=AUTHORIZED)
    async def models(self) -> ModelList:
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
