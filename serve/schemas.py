"""HTTP request and response bodies (pydantic), for the native API and the OpenAI speech API.

Limits that depend on the deployment's settings (text length, NFE and speed ranges, upload size) are
checked by the ingress against ``ServeSettings``; the models here hold what is fixed by the API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OPENAI_MAX_INSTRUCTIONS_CHARS = 4096


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(ApiModel):
    code: str
    message: str
    field: str | None = Field(default=None, description="the request field it is about (absent: none)")


class ErrorResponse(ApiModel):
    """Every error crossing HTTP: ``{"error": {"code", "message", "field"}}`` (``field`` only where there is
    one; the OpenAI routes answer ``{"error": {"code", "message"}}``)."""

    error: ErrorDetail


class SamplingFields(ApiModel):
    """How to sample, in every synthesis and edit request; ranges that are not fixed by the API (nfe) or that
    the core library owns (target_rms) are checked when the request becomes a job (``serve.job_options``)."""

    nfe: int | None = Field(default=None, description="ODE steps (default: the server's)")
    cfg_strength: float | None = Field(default=None, ge=0.0, le=10.0)
    sway_sampling_coef: float | None = Field(default=None, ge=-1.0, le=1.0)
    ode_method: Literal["euler", "midpoint"] | None = Field(
        default=None, description="ODE rule (default: the server's); midpoint calls the model twice per step"
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    target_rms: float | None = Field(
        default=None, description="RMS in (0, 1] a quieter reference is raised to for sampling (default 0.1)"
    )


class SynthesisFields(SamplingFields):
    """What to do around sampling, in both speech routes."""

    fix_duration: float | None = Field(
        default=None, description="total seconds, reference plus generated (default: estimated from the text)"
    )
    remove_silence: bool = Field(default=False, description="shorten pauses over 1 s to 1 s (after the whole text)")
    cross_fade_duration: float | None = Field(
        default=None, description="seconds of cross-fade between chunks, 0 to 1 (default 0.15)"
    )
    candidates: int | None = Field(
        default=None,
        description="best of N: sample each chunk N times and keep the one the server's ASR judge hears best "
        "(1 to limits.max_candidates, default 1); headers X-Candidates, X-Candidate-Scores, X-Chosen-Seed",
    )


class TTSRequest(SynthesisFields):
    """``POST /v1/tts``: a stored ``voice`` OR an inline reference (``ref_audio`` base64 + ``ref_text``).
    ``[name]`` tags in ``text`` switch to other stored voices (``flowtts.synthesis.multivoice``)."""

    text: str = Field(min_length=1, description="text to speak")
    voice: str | None = Field(default=None, description="id or name of a stored voice")
    ref_audio: str | None = Field(default=None, description="reference audio file, base64 (wav, flac, ogg, mp3)")
    ref_text: str | None = Field(
        default=None, description="transcript of ref_audio (empty or absent: transcribed by the ASR model)"
    )
    speed: float | None = None
    response_format: Literal["wav", "flac", "mp3", "opus", "aac", "pcm"] = "wav"
    stream: bool = Field(default=False, description="send audio chunk by chunk (every format but aac)")

    @model_validator(mode="after")
    def _one_reference(self) -> TTSRequest:
        if (self.voice is None) == (self.ref_audio is None):
            raise ValueError("give exactly one of 'voice' or 'ref_audio' (with 'ref_text')")
        if self.stream and self.response_format == "aac":
            raise ValueError("stream=true cannot send aac; stream wav, pcm, mp3, opus or flac")
        return self


class EditRequest(SamplingFields):
    """``POST /v1/edit``: regenerate ``spans`` of ``audio`` so that the recording says ``new_text``."""

    audio: str = Field(min_length=1, description="the recording to edit, an audio file in base64")
    text: str = Field(min_length=1, description="what the recording says")
    new_text: str = Field(min_length=1, description="what it should say: the whole new transcript")
    spans: list[list[float]] = Field(description="[[start, end], ...] seconds to regenerate, sorted, not overlapping")
    durations: list[float] | None = Field(
        default=None, description="new length of each span in seconds (default: keep the speaking rate)"
    )
    response_format: Literal["wav", "flac", "mp3", "opus", "pcm"] = "wav"


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str


class SpeechRequest(SynthesisFields):
    """``POST /v1/audio/speech`` in OpenAI's shape; unknown fields are ignored, like other compatible servers.

    ``model`` is accepted and reported but does not select anything (one model per application);
    ``voice`` is a stored voice id or name, or an OpenAI name the settings map to one (a string or
    ``{"id": ...}``); ``instructions`` is accepted and ignored (``X-Instructions-Ignored: true``).
    ``seed`` and the other ``SynthesisFields`` are our extensions (``extra_body={"seed": 7}`` in the openai
    client).
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str = Field(min_length=1)
    voice: str | VoiceId
    instructions: str | None = Field(default=None, max_length=OPENAI_MAX_INSTRUCTIONS_CHARS)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_key(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class VoiceFields(ApiModel):
    """The text fields of a voice upload (the multipart form's non-file parts)."""

    transcript: str = Field(default="", description="empty: transcribed by the server's ASR model")
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.\- ]+$")


class VoiceCreateRequest(VoiceFields):
    """``POST /v1/voices`` as JSON; the multipart form has the same fields with ``audio`` as a file part."""

    audio: str = Field(min_length=1, description="reference audio file, base64")


class VoiceInfo(ApiModel):
    id: str
    name: str | None
    transcript: str
    duration_s: float
    sample_rate: int
    created_at: float
    audio_sha256: str


class VoiceList(ApiModel):
    voices: list[VoiceInfo]


class DeletedVoice(ApiModel):
    id: str
    deleted: bool = True


class ModelCard(ApiModel):
    """One entry of ``GET /v1/models`` (OpenAI list shape plus registry fields)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flowtts"
    name: str
    version: str | None
    alias: str | None
    uri: str
    run_id: str | None
    config: dict


class ModelList(ApiModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(ApiModel):
    """``/healthz``: the ingress runs (liveness; no model call)."""

    status: Literal["ok"] = "ok"


class Ready(ApiModel):
    """``/readyz``: a model replica answered its health call."""

    status: Literal["ready"] = "ready"
    model_version: str | None


class RegistryVersion(ApiModel):
    """One version of the served model's registered model, with what the evaluation gate wrote on it."""

    version: str
    aliases: list[str]
    run_id: str | None
    created_at: float
    status: str
    metrics: dict[str, float] = Field(description="held-out metrics of its run (eval/..., from the gate)")
    tags: dict[str, str]
    report: str | None = Field(
        default=None, description="link to its evaluation report (the run's evaluation/report.html), signed"
    )


class RegistryView(ApiModel):
    name: str
    versions: list[RegistryVersion]


class TrainRequest(ApiModel):
    """``POST /v1/train``: what the studio's Train form sends; becomes a ``jobs/train.py`` command line."""

    data: str = Field(min_length=1, description="dataset folder or URI written by jobs/preprocess.py")
    preset: str = Field(default="tiny", description="a preset name (GET /v1/train lists them)")
    init_from: str | None = Field(default=None, description="checkpoint to fine-tune from (server path)")
    max_steps: int = Field(default=100, ge=1, le=10_000_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    overrides: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more config overrides, e.g. {'train.batch_size_per_gpu': 1500}"
    )

    @field_validator("overrides")
    @classmethod
    def _override_keys(cls, overrides: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for key in overrides:
            if not key.replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"override key {key!r} must look like section.field (letters, digits, _ and .)")
        return overrides


class TrainJobInfo(ApiModel):
    """A training job submitted by the studio, as the Ray Jobs API and MLflow report it."""

    id: str
    status: Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]
    message: str | None
    entrypoint: str
    start_time: float | None
    end_time: float | None
    logs: str | None = Field(default=None, description="the last lines of the job's log")
    loss: list[tuple[int, float]] | None = Field(default=None, description="(step, loss) from the MLflow run")
    model_version: str | None = Field(default=None, description="the version it registered, once it succeeded")


class TrainJobList(ApiModel):
    presets: list[str]
    jobs: list[TrainJobInfo]


class SpeechVoices(ApiModel):
    """``GET /v1/audio/voices``: every value ``voice`` accepts, and the configured OpenAI names."""

    voices: list[str]
    aliases: dict[str, str]
