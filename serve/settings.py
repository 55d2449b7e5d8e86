"""The serving settings: one typed object the builder and both deployments read.

``args:`` of a Serve config are ``ServeSettings`` fields; the four deployment-specific ones fall back to
environment variables so one config file works on a laptop and on a cluster: ``FLOWTTS_MODEL_URI``,
``FLOWTTS_VOCODER``, ``FLOWTTS_VOICES_URI``, ``FLOWTTS_API_KEY`` (args win over the environment, the
environment over the defaults). Where the model comes from is ``flowtts.model_source.ModelSource``.

Each deployment's Serve options (replicas, concurrency, overload, resources) are ``MODEL_DEPLOYMENT`` and
``INGRESS_DEPLOYMENT`` here, in Ray's own schema of a Serve config's ``deployments:`` entries: the builder
applies them, a Serve config's ``deployments:`` override them, and the deployment decorators carry none.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from ray.serve.schema import DeploymentSchema

from flowtts.synthesis import SamplingSettings
from flowtts.text import TextFrontend

ENV_VARS = {
    "model_uri": "FLOWTTS_MODEL_URI",
    "vocoder": "FLOWTTS_VOCODER",
    "voices_uri": "FLOWTTS_VOICES_URI",
    "api_key": "FLOWTTS_API_KEY",
}
DEFAULT_MODEL_URI = "models:/flowtts@production"


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingSettings(StrictSettings):
    """Initial batching; ``user_config`` of the TTSModel deployment changes it at run time."""

    max_batch_size: int = Field(default=16, ge=1, le=256, description="requests per batch")
    batch_wait_timeout_s: float = Field(
        default=0.05, ge=0.0, le=10.0, description="how long the first request of a batch waits for others"
    )
    max_batch_frames: int = Field(
        default=32768, ge=64, description="cap on items x padded mel frames per sample() call"
    )


MODEL_DEPLOYMENT = DeploymentSchema(
    name="TTSModel",
    max_ongoing_requests=32,  # keep >= max_batch_size, or a batch can never fill
    max_queued_requests=64,  # past this many waiting requests: 429 + Retry-After at once
    backpressure_config={"status_code": 429, "retry_after_s": 5},
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16,  # about one full batch per replica before scaling out
        "upscale_delay_s": 10,
        "downscale_delay_s": 300,
    },
    ray_actor_options={"num_cpus": 1},
    graceful_shutdown_timeout_s=60,
    health_check_period_s=10,  # TTSModel.check_health
    max_surge_percent=100,  # a model update starts the new replicas before the old ones stop
)
INGRESS_DEPLOYMENT = DeploymentSchema(
    name="TTSIngress",
    max_ongoing_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 64},
    ray_actor_options={"num_cpus": 0.25},
    max_surge_percent=100,
)


class LimitSettings(StrictSettings):
    max_text_chars: int = Field(default=2000, ge=1, description="text of /v1/tts")
    max_reference_seconds: float = Field(default=30.0, gt=0)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    drain_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="an oversized body is read (and dropped) up to this size so the client gets the 413",
    )
    nfe_range: tuple[int, int] = (4, 64)
    speed_range: tuple[float, float] = (0.25, 4.0)
    max_fix_duration_s: float = Field(default=60.0, gt=0, description="longest fix_duration a request may ask")
    max_candidates: int = Field(
        default=8, ge=1, le=64, description="most candidates (best of N) a request may ask; each is one more row"
    )

    @model_validator(mode="after")
    def _ordered(self) -> LimitSettings:
        for name in ("nfe_range", "speed_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        return self


class TrainingSettings(StrictSettings):
    """The studio's Train section: ``jobs/train.py`` submitted through the Ray Jobs API. Off unless enabled,
    and only with ``api_key`` set (the routes require the key)."""

    enabled: bool = False
    ray_address: str | None = Field(
        default=None, description="Ray Jobs API (dashboard) address; default: the cluster the app runs on"
    )
    working_dir: str | None = Field(
        default=None, description="the job's working_dir, holding jobs/train.py; default: this code's checkout"
    )
    storage: str | None = Field(default=None, description="--storage of the job (default: the job's own)")
    experiment: str = Field(default="flowtts", description="MLflow experiment of the runs")
    registered_model: str | None = Field(default=None, description="default: the served model's name")
    cpus_per_worker: float = Field(default=0.5, gt=0, description="Ray CPUs of the one training worker")
    env_vars: dict[str, str] = Field(default_factory=dict, description="extra environment of the job")


class JudgeSettings(StrictSettings):
    """The judges of best-of-N re-ranking (``candidates`` > 1), loaded once on every model replica and warmed up
    with the model. Weights come from a local folder or the Hugging Face cache, never downloaded."""

    asr_model: str | None = Field(
        default=None,
        description="ASR judge (HF-layout folder or cached repo id, CTC or Whisper-style), e.g. "
        "nguyenvulebinh/wav2vec2-base-vietnamese-250h; without one, candidates > 1 get 422 judge_required",
    )
    speaker_model: str | None = Field(
        default=None,
        description="speaker judge (a WavLMForXVector, e.g. microsoft/wavlm-base-plus-sv): similarity to the "
        "reference voice breaks ties of the ASR judge",
    )
    device: str | None = Field(default=None, description="torch device of the judges (default: the model's)")

    @model_validator(mode="after")
    def _speaker_needs_asr(self) -> JudgeSettings:
        if self.speaker_model is not None and self.asr_model is None:
            raise ValueError("judges.speaker_model breaks ties of the ASR judge: set judges.asr_model too")
        return self


class OpenAISettings(StrictSettings):
    """The OpenAI drop-in: ``/v1/audio/speech`` input cap and OpenAI voice names -> stored voices."""

    max_input_chars: int = Field(default=4096, ge=1, description="input of /v1/audio/speech (OpenAI: 4096)")
    voices: dict[str, str] = Field(
        default_factory=dict, description="OpenAI voice name (alloy, ...) -> stored voice id or name"
    )


class StreamingSettings(StrictSettings):
    first_chunk_bytes: int = Field(
        default=48,
        ge=0,
        description="a streamed text's first chunk: its first clause, cut at a space to this many UTF-8 bytes "
        "(0: the first chunk is as long as the others)",
    )


class ServeSettings(StrictSettings):
    """Everything the application needs; ``args:`` in the Serve config are these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    model_uri: str = Field(
        default=DEFAULT_MODEL_URI,
        description=(
            "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, a checkpoint folder, or an "
            "official F5-TTS .safetensors/.pt file (vocab.txt beside it or `vocab`, and `model_config`); a folder "
            "or file is a path or a URI every replica's node reaches (s3://bucket/ckpt)"
        ),
    )
    vocab: str | None = Field(
        default=None, description="vocab.txt (path or URI) of an official file (default: the one beside it)"
    )
    model_arch: str | None = Field(
        default=None,
        alias="model_config",
        description="an official file's model config: preset name, YAML/JSON of ours or upstream's (F5TTS_v1_Base)",
    )
    text_frontend: TextFrontend | None = Field(
        default=None,
        description="text front end {normalizer: vietnamese|plain, lowercase}: an official file's (default "
        "vietnamese); replaces a model's recorded one. A vocab without capitals always lowercases",
    )
    asr_model: str | None = Field(
        default=None,
        description="ASR model (HF-layout folder or cached repo id, CTC or Whisper-style) that transcribes "
        "references and voices given without a transcript; without one those get 422",
    )
    judges: JudgeSettings = Field(default_factory=JudgeSettings)
    revision: str | None = Field(default=None, description="free text; change it to force a rolling update")
    vocoder: str | None = Field(
        default=None, description="Vocos folder (config.yaml + weights): a path, or a URI such as s3://bucket/vocos"
    )
    voices_uri: str = Field(default="voices", description="voice store: local folder or pyarrow URI (s3://...)")
    api_key: SecretStr | None = Field(default=None, description="require 'Authorization: Bearer <key>'")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI (default: MLflow's own)")
    device: str = "cpu"
    backend: Literal["eager", "compiled", "onnxruntime"] = Field(
        default="eager",
        description="how sampling steps run (flowtts.inference): built and warmed up before the replica is ready",
    )
    onnx_file: str | None = Field(
        default=None,
        description="onnxruntime: the step jobs/export.py wrote, a path or runs:/ URI (default: export at start)",
    )
    default_nfe: int = Field(default=32, ge=1)
    default_cfg_strength: float = 2.0
    default_sway_sampling_coef: float = -1.0
    default_ode_method: Literal["euler", "midpoint"] = "euler"
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS (none: CORS off)")
    reference_cache_size: int = Field(default=64, ge=1)
    warmup: bool = Field(default=True, description="run a tiny synthesis at start; the replica fails if it fails")
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @model_validator(mode="after")
    def _default_nfe_allowed(self) -> ServeSettings:
        low, high = self.limits.nfe_range
        if not low <= self.default_nfe <= high:
            raise ValueError(f"default_nfe={self.default_nfe} is outside limits.nfe_range {(low, high)}")
        return self

    @model_validator(mode="after")
    def _training_needs_the_key(self) -> ServeSettings:
        if self.training.enabled and self.api_key is None:
            raise ValueError("training.enabled needs api_key: the Train routes only answer requests that carry it")
        return self

    @property
    def default_sampling(self) -> SamplingSettings:
        """What a request that names no sampling setting is sampled with."""
        return SamplingSettings(
            nfe=self.default_nfe,
            cfg_strength=self.default_cfg_strength,
            sway_sampling_coef=self.default_sway_sampling_coef,
            ode_method=self.default_ode_method,
        )

    @classmethod
    def from_args(cls, args: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> ServeSettings:
        """``args`` (from the Serve config) over environment variables over defaults."""
        environ = os.environ if environ is None else environ
        merged = {field: environ[var] for field, var in ENV_VARS.items() if environ.get(var)}
        merged.update(args or {})
        return cls.model_validate(merged)
