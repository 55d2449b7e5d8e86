"""The training job's options, declared once, and what the driver resolves from them for every worker.

``TrainJob`` is the only declaration of an option: ``jobs/train.py`` builds its argparse parser from the
model's fields (flag ``--field-name``, type, default and help from the field), and the validated model
travels unchanged to the Ray Train workers inside ``TrainSettings``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowtts.config import FlowTTSConfig
from flowtts.model_source import ModelUri
from flowtts.storage import Location, StorageUri, resolve
from flowtts.text import Vocab

RUN_INFO_FILE = "flowtts_run.json"  # in <storage>/<name>/: the MLflow run this training run logs to
INIT_DIR = "init_weights"  # in <storage>/<name>/: the warm-start weights (our format), when any


def _default_storage() -> str:
    return os.environ.get("FLOWTTS_STORAGE", "outputs/ray_train")


class RunOptions(BaseModel):
    """The options every training job shares: where it runs, where it is tracked and registered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: StorageUri = Field(
        default_factory=_default_storage,
        validate_default=True,
        description="Ray Train storage, $FLOWTTS_STORAGE when set: a folder, or a URI every node reaches "
        "(s3://bucket/runs, gs://..., hdfs://...; a URI needs MLFLOW_TRACKING_URI)",
    )
    experiment: str = Field(default="flowtts", description="MLflow experiment")
    registered_model: str = Field(default="flowtts", description="MLflow registered model name")
    alias: str = Field(default="candidate", description="alias set on the new model version")
    num_cpus: int | None = Field(default=None, description="CPUs of the local Ray instance (ignored with RAY_ADDRESS)")


class TrainJob(RunOptions):
    """What the user asked for: the options of ``jobs/train.py``."""

    config: str = Field(description="preset name (tiny, F5TTS_v1_Base, ...) or a YAML file")
    data: str = Field(description="dataset folder or URI (s3://bucket/dataset) written by preprocess.py")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="config override, e.g. train.learning_rate=1e-4 (repeatable)",
        json_schema_extra={"flag": "--set", "metavar": "KEY=VALUE"},
    )
    name: str | None = Field(
        default=None, description="run name; the same name resumes the run (default: preset-timestamp)"
    )
    workers: int = Field(default=1, gt=0, description="DDP workers")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        default="pack",
        description="where the workers go: pack (fewest nodes), spread (across nodes where possible) or "
        "strict_spread (each on its own node)",
    )
    gpu: bool = Field(default=False, description="one GPU per worker, NCCL, bf16 autocast")
    cpus_per_worker: float = Field(
        default=0.5, gt=0, description="Ray CPUs per worker (default 0.5); torch threads = max(1, int(this))"
    )
    max_steps: int | None = Field(default=None, gt=0, description="stop at this optimizer update")
    seed: int = Field(default=0, description="seed of the weights, the batch order and the noise")
    init_from: ModelUri | None = Field(
        default=None,
        description="official F5-TTS checkpoint or a checkpoint folder of ours (a path or a URI: s3://bucket/ckpt), "
        "or a registered model (models:/NAME@ALIAS)",
    )
    init_vocab: StorageUri | None = Field(
        default=None, description="vocab.txt of an official --init-from checkpoint: a path or a URI"
    )
    duration_predictor: bool = Field(
        default=False,
        description="train a duration predictor together with the CFM (its loss is logged as duration_loss; "
        "same-speaker clip pairs, so the data needs speakers)",
    )
    checkpoint_every: int | None = Field(default=None, gt=0, description="steps between checkpoints")
    log_every: int = Field(default=10, gt=0, description="steps between progress lines")
    sample_steps: int = Field(default=32, gt=0, description="NFE of the logged samples")
    vocoder: str | None = Field(
        default=None,
        description="Vocos folder (a path or a URI) for samples and the registered model (default: Griffin-Lim)",
    )
    max_failures: int = Field(default=2, description="worker-failure restarts")

    @field_validator("data", mode="before")
    @classmethod
    def _data_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value


class TrainSettings(BaseModel):
    """The job as given, plus what the driver resolved once; a plain dict travels to the workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: TrainJob
    config: dict[str, Any]  # FlowTTSConfig, text_num_embeds == len(vocab)
    vocab: list[str]  # the final vocab (dataset texts are tokenised with it)
    data: str  # dataset folder (absolute) or URI
    name: str
    storage: str  # an absolute folder or a URI (flowtts.storage)
    max_steps: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    sample_every: int = Field(ge=0)  # 0: no samples
    init_weights: str | None = None  # folder of ours to start from (in the run folder: a path or a URI)
    tracking_uri: str
    mlflow_run_id: str

    def flowtts_config(self) -> FlowTTSConfig:
        return FlowTTSConfig.model_validate(self.config)

    def final_vocab(self) -> Vocab:
        return Vocab(self.vocab)

    @property
    def run_dir(self) -> Location:
        """``<storage>/<name>``: Ray Train's checkpoints and what the trainer keeps beside them."""
        return resolve(self.storage).join(self.name)
