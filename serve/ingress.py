"""The ingress deployment: ``TTSIngress`` (FastAPI) with the native API, the OpenAI speech API, voices,
probes and models; the studio page and the routes only it needs come from ``serve.studio_routes``.

Request path: each route declares its body model (``serve.request_bodies.json_body``, within the body cap);
the ingress validates and decodes (size caps, base64, audio; request bodies become jobs within the limits in
``serve.job_options``; auth is a route dependency), then calls ``TTSModel.synthesize`` (or
``synthesize_stream``, ``edit``) through ``ModelClient``'s typed methods (overload, a lost replica and
``ClientError`` replies become HTTP answers there).

No ``from __future__ import annotations`` here: FastAPI must see the real annotations of the class-based
routes that ``serve.ingress`` rewrites.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, replace
from types import MappingProxyType

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from flowtts.usage_reporting import usage_reporting_off
from flowtts.voices import Voice, VoiceNameTakenError, VoiceNotFoundError, VoiceStore
from serve.audio_responses import speech_events, streamed_audio, whole_audio
from serve.http_access import AUTHORIZED, install_cors
from serve.http_errors import ApiError, install_error_handlers
from serve.job_options import edit_job, synthesis_job
from serve.messages import SAMPLE_RATE, ReferenceSpec, SynthesisJob
from serve.model_client import ModelClient
from serve.openai_compat import OPENAI_ROUTES, ignored_headers, speech_voices, stored_voice_key
from serve.references import inline_reference, lookup_voice, stored_reference, tag_references
from serve.request_bodies import (
    capped_body,
    check_text_length,
    decode_base64,
    decode_reference_audio,
    json_body,
    json_body_schema,
    parse_model,
    parse_multipart,
    validate_model,
)
from serve.schemas import (
    DeletedVoice,
    EditRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Ready,
    SpeechRequest,
    SpeechVoices,
    TTSRequest,
    VoiceCreateRequest,
    VoiceFields,
    VoiceInfo,
    VoiceList,
)
from serve.settings import ServeSettings
from serve.studio_routes import router as studio_router
from serve.telemetry import IngressMetrics, install_request_metrics
from serve.training_jobs import TrainingJobs

logger = logging.getLogger("ray.serve")
BODY = capped_body()
TTS_BODY, SPEECH_BODY, EDIT_BODY = (json_body(model) for model in (TTSRequest, SpeechRequest, EditRequest))
TTS_FIELDS = MappingProxyType({"audio": "ref_audio", "transcript": "ref_text"})  # /v1/tts' names of the reference

api = FastAPI(title="flowtts", description="F5-TTS serving: native and OpenAI-compatible speech API")
install_error_handlers(api, OPENAI_ROUTES)
api.include_router(studio_router)  # the studio page and the routes only it needs
install_request_metrics(api)
install_cors(api)


@serve.deployment  # its options: serve.settings.INGRESS_DEPLOYMENT, applied by serve.app
@serve.ingress(api)
class TTSIngress:
    def __init__(self, settings: ServeSettings, model: DeploymentHandle):
        usage_reporting_off()  # the registry view and training jobs use MLflow; whatever the runtime_env says
        self.settings = settings
        self.limits = settings.limits
        self.model = ModelClient(model)
        self.voices = VoiceStore(settings.voices_uri)
        self.api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self.training = TrainingJobs(settings.training, settings.tracking_uri) if settings.training.enabled else None
        self.metrics = IngressMetrics()

    # ------------------------------------------------------------ references

    async def _voice(self, id_or_name: str, field: str | None = None) -> Voice:
        return await lookup_voice(self.voices, id_or_name, field=field)

    async def _voice_reference(self, id_or_name: str, field: str) -> ReferenceSpec:
        return stored_reference(await self._voice(id_or_name, field))

    def _inline_reference(self, ref_audio: str, ref_text: str) -> ReferenceSpec:
        data = decode_base64(ref_audio, "ref_audio")
        return inline_reference(data, decode_reference_audio(data, self.limits, "ref_audio"), ref_text)

    async def _job(self, job: SynthesisJob) -> SynthesisJob:
        """``job`` with the stored voice of every ``[name]`` tag of its text (at the job's target RMS)."""
        voices = await tag_references(self.voices, job.text, self.limits)
        rms = job.reference.target_rms
        return replace(job, voices=tuple((name, replace(spec, target_rms=rms)) for name, spec in voices))

    # ------------------------------------------------------------ running jobs

    async def _run(self, request: Request, job: SynthesisJob, fmt: str, stream: bool, headers: dict) -> Response:
        started = request.state.started
        if stream:
            start, chunks = await self.model.open_stream(job, TTS_FIELDS)
            return streamed_audio(start, chunks, fmt, self.metrics, started, headers)
        reply = await self.model.synthesize(job, TTS_FIELDS)
        return await whole_audio(reply, fmt, self.metrics, started, headers)

    def _streamed(self, job: SynthesisJob) -> SynthesisJob:
        """A streamed request's job: a short first chunk, so that the first audio comes soon."""
        first = self.settings.streaming.first_chunk_bytes or None
        return replace(job, options=replace(job.options, first_chunk_bytes=first))

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
    async def tts(self, request: Request, req: TTSRequest = TTS_BODY) -> Response:
        """Synthesise ``text`` in a stored or inline voice; audio bytes in ``response_format``."""
        check_text_length(req.text, self.limits.max_text_chars, "text")
        if req.voice is not None:
            reference = await self._voice_reference(req.voice, "voice")
        else:
            reference = await asyncio.to_thread(self._inline_reference, req.ref_audio, req.ref_text or "")
        job = await self._job(synthesis_job(self.settings, req, req.text, reference))
        return await self._run(request, self._streamed(job) if req.stream else job, req.response_format, req.stream, {})

    @api.post(
        "/v1/audio/speech",
        dependencies=AUTHORIZED,
        response_class=Response,
        openapi_extra=json_body_schema(SpeechRequest),
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorResponse}},
    )
    async def speech(self, request: Request, req: SpeechRequest = SPEECH_BODY) -> Response:
        """OpenAI-compatible speech: ``voice`` is a stored voice id or name, or an OpenAI name mapped to one
        in the settings; audio is streamed as each text chunk is ready (every format but aac, which is
        encoded once); ``stream_format=sse`` sends OpenAI's ``speech.audio.delta``/``.done`` events."""
        check_text_length(req.input, self.settings.openai.max_input_chars, "input")
        stream = req.response_format != "aac" or req.stream_format == "sse"
        reference = await self._voice_reference(stored_voice_key(req, self.settings.openai), "voice")
        job = await self._job(synthesis_job(self.settings, req, req.input, reference))
        if stream:
            job = self._streamed(job)
        if req.stream_format == "sse":
            start, chunks = await self.model.open_stream(job)
            return speech_events(
                start,
                chunks,
                req.response_format,
                len(req.input),
                self.metrics,
                request.state.started,
                ignored_headers(req),
            )
        return await self._run(request, job, req.response_format, stream, ignored_headers(req))

    @api.get("/v1/audio/voices", response_model=SpeechVoices, dependencies=AUTHORIZED)
    async def speech_voices(self) -> SpeechVoices:
        """Every ``voice`` value ``/v1/audio/speech`` accepts: the configured OpenAI names, then stored voices."""
        return speech_voices(await asyncio.to_thread(self.voices.list), self.settings.openai)

    @api.post(
        "/v1/edit",
        dependencies=AUTHORIZED,
        response_class=Response,
        openapi_extra=json_body_schema(EditRequest),
        responses={200: {"content": {"audio/wav": {}}}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    )
    async def edit(self, request: Request, req: EditRequest = EDIT_BODY) -> Response:
        """Regenerate ``spans`` of ``audio`` so it says ``new_text``; outside them the original, sample for sample
        (``X-Edited-Spans``: where the regenerated spans are in the result)."""
        job = await asyncio.to_thread(edit_job, self.settings, req)
        reply = await self.model.edit(job)
        return await whole_audio(reply, req.response_format, self.metrics, request.state.started, {})

    # ------------------------------------------------------------ routes: voices

    @api.post(
        "/v1/voices",
        dependencies=AUTHORIZED,
        status_code=201,
        response_model=VoiceInfo,
        openapi_extra=json_body_schema(VoiceCreateRequest),
    )
    async def create_voice(self, request: Request, body: bytes = BODY) -> VoiceInfo:
        """Store a voice: JSON (``audio`` base64, ``transcript``, ``name``) or multipart/form-data
        (``audio`` file, ``transcript``, ``name``)."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            fields = parse_multipart(kind, body)
            form = {key: fields[key].decode("utf-8", "replace") for key in ("transcript", "name") if key in fields}
            if "audio" not in fields:
                raise ApiError(
                    422, "invalid_request", "audio: field required (a file part named 'audio')", field="audio"
                )
            req = validate_model(VoiceFields, form)
            data = fields["audio"]
        else:
            req = parse_model(VoiceCreateRequest, body)
            data = decode_base64(req.audio, "audio")
        audio = await asyncio.to_thread(decode_reference_audio, data, self.limits, "audio")
        spec = ReferenceSpec(
            key="upload:" + hashlib.sha256(data + req.transcript.encode()).hexdigest(),
            text=req.transcript,
            audio=audio,
        )
        transcript = await self.model.check_reference(spec)
        try:
            voice = await asyncio.to_thread(self.voices.create, audio, SAMPLE_RATE, transcript, req.name)
        except VoiceNameTakenError as exc:
            raise ApiError(409, "voice_name_taken", str(exc), field="name") from exc
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

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        """Liveness: the ingress answers, whatever the model is doing (no model call)."""
        return Health()

    @api.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
    async def readyz(self) -> Ready:
        """Readiness: 200 when a model replica answers its health call within 5 s; 503 JSON otherwise."""
        return Ready(model_version=(await self.model.ready()).model_version)

    @api.get("/v1/models", response_model=ModelList, dependencies=AUTHORIZED)
    async def models(self) -> ModelList:
        info = await self.model.describe()
        card = ModelCard(
            id=info.model_version,
            created=int(time.time()),
            name=info.name,
            version=info.version,
            alias=info.alias,
            uri=info.uri,
            run_id=info.run_id,
            config=asdict(info.config),
        )
        return ModelList(data=[card])
