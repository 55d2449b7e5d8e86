"""What one training run needs, resolved by the driver and handed to every Ray Train worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flowtts.config import FlowTTSConfig
from flowtts.text import Vocab

RUN_INFO_FILE = "flowtts_run.json"  # in <storage>/<name>/: the MLflow run this training run logs to
INIT_DIR = "init_weights"  # in <storage>/<name>/: the warm-start weights (our format), when any
FAIL_MARKER = ".flowtts_failure_injected"  # test hook: the injected failure happened already


class TrainSettings(BaseModel):
    """Validated once in the driver; a plain dict travels to the workers (``train_loop_config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict[str, Any]  # FlowTTSConfig, text_num_embeds == len(vocab)
    vocab: list[str]  # the final vocab (dataset texts are tokenised with it)
    data: str  # dataset folder (absolute)
    name: str
    storage: str  # absolute
    seed: int = 0
    max_steps: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    log_every: int = Field(default=10, gt=0)
    sample_every: int = Field(ge=0)  # 0: no samples
    sample_steps: int = Field(default=32, gt=0)  # NFE of the training samples
    vocoder: str | None = None  # Vocos folder / cached repo id for samples; None = Griffin-Lim
    init_weights: str | None = None  # folder of ours to start from
    workers: int = Field(default=1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    tracking_uri: str
    experiment: str
    mlflow_run_id: str
    fail_at_step: int | None = None  # test hook: the last rank dies once after this step

    def flowtts_config(self) -> FlowTTSConfig:
        return FlowTTSConfig.model_validate(self.config)

    def final_vocab(self) -> Vocab:
        return Vocab(self.vocab)

    @property
    def run_dir(self) -> Path:
        return Path(self.storage) / self.name
