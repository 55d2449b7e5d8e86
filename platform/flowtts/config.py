"""One typed configuration, shared by training, export and serving.

Field names follow upstream F5-TTS (``dim``, ``depth``, ``text_num_embeds``, ...) so that an official
``config.json`` or YAML ``arch`` block validates unchanged. Presets are YAML data in ``presets/``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Keys that appear in upstream-style config files but describe provenance, not the architecture.
INFORMATIONAL_KEYS = frozenset({"reference"})


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MelConfig(StrictModel):
    """Vocos-type log-mel, exactly as upstream computes it."""

    target_sample_rate: int = 24000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mel_channels: int = 100
    mel_spec_type: Literal["vocos"] = "vocos"


class DurationPredictorConfig(StrictModel):
    """Total-duration model (ours; official checkpoints have none)."""

    dim: int = 128
    conv_layers: int = 1
    ref_mel_dim: int = 100
    dropout: float = 0.1


class ModelConfig(StrictModel):
    """Backbone hyperparameters with upstream names."""

    backbone: Literal["DiT", "UNetT", "MMDiT"] = "DiT"
    dim: int
    depth: int
    heads: int
    dim_head: int = 64
    ff_mult: int = 2
    dropout: float = 0.1
    text_dim: int | None = None
    conv_layers: int = 0
    text_mask_padding: bool = True
    pe_attn_head: int | None = None
    qk_norm: Literal["rms_norm"] | None = None
    long_skip_connection: bool = False
    text_embedding_average_upsampling: bool = False  # DiT: ZipVoice-style text upsampling (needs text_mask_padding)
    attn_mask_enabled: bool = False  # DiT: mask padded keys in attention (upstream default off)
    mel_dim: int = 100
    text_num_embeds: int = 256
    checkpoint_activations: bool = False
    duration_predictor: DurationPredictorConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.backbone == "UNetT" and self.depth % 2:
            raise ValueError(f"UNetT needs an even depth, got depth={self.depth}")
        if self.text_embedding_average_upsampling and not (self.backbone == "DiT" and self.text_mask_padding):
            raise ValueError("text_embedding_average_upsampling needs backbone DiT and text_mask_padding true")
        if self.pe_attn_head is not None and not 0 < self.pe_attn_head <= self.heads:
            raise ValueError(f"pe_attn_head={self.pe_attn_head} must be in 1..heads ({self.heads}) or null")
        return self

    @classmethod
    def from_upstream(cls, values: dict[str, Any] | ModelConfig) -> ModelConfig:
        """Accept an upstream-style dict (e.g. a fixture's ``config.json``) or a config object."""
        if isinstance(values, ModelConfig):
            return values
        return cls.model_validate({k: v for k, v in values.items() if k not in INFORMATIONAL_KEYS})

    def with_vocab_size(self, size: int) -> ModelConfig:
        return self.model_copy(update={"text_num_embeds": size})


class TrainConfig(StrictModel):
    """The training recipe (upstream names where upstream has them)."""

    learning_rate: float = 7.5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    num_warmup_updates: int = 20000
    max_updates: int = 1_200_000
    max_grad_norm: float = 1.0
    grad_accumulation_steps: int = 1
    batch_size_per_gpu: int = 38400  # frames
    max_samples: int = 64
    audio_drop_prob: float = 0.3
    cond_drop_prob: float = 0.2
    frac_lengths_mask: tuple[float, float] = (0.7, 1.0)
    ema_beta: float = 0.9999
    ema_update_after_step: int = 100
    ema_update_every: int = 10
    save_per_updates: int = 5000
    log_samples_per_updates: int = 5000
    keep_last_n_checkpoints: int = 2
    duration_loss_weight: float = 1.0


class FlowTTSConfig(StrictModel):
    """Everything needed to rebuild a model and train it: read once, passed everywhere."""

    name: str = "custom"
    model: ModelConfig
    mel: MelConfig = Field(default_factory=MelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def fingerprint(self) -> str:
        """Short stable hash of the configuration (used as a registry tag)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> FlowTTSConfig:
        """Apply dotted overrides such as ``{"train.learning_rate": 1e-4}``; result is re-validated."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise KeyError(f"unknown config section {key!r} in override {dotted!r}")
                node = node[key]
            if leaf not in node and leaf not in _fields_of(parents):
                raise KeyError(f"unknown config key {dotted!r}")
            node[leaf] = value
        return FlowTTSConfig.model_validate(data)


def _fields_of(path: list[str]) -> set[str]:
    cls: type[BaseModel] = FlowTTSConfig
    for key in path:
        annotation = cls.model_fields[key].annotation
        cls = next(a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type))
    return set(cls.model_fields)


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("flowtts.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_config(name_or_path: str | Path) -> FlowTTSConfig:
    """Load a preset by name (``tiny``, ``F5TTS_v1_Base``, ...) or a YAML/JSON file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml", ".json"} and path.is_file():
        text = path.read_text(encoding="utf-8")
        default_name = path.stem
    elif str(name_or_path) in preset_names():
        text = resources.files("flowtts.presets").joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
        default_name = str(name_or_path)
    else:
        raise FileNotFoundError(
            f"config {str(name_or_path)!r} is neither a file nor a preset; presets: {', '.join(preset_names())}"
        )
    data = yaml.safe_load(text)
    data.setdefault("name", default_name)
    return FlowTTSConfig.model_validate(data)
