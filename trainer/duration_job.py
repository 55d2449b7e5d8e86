"""Training the duration predictor alone, on Ray Train, for a model that is already trained or imported
(an official checkpoint converted to our format has none).

One worker loads the base model (a folder of ours or a registry URI, resolved on the worker so it works
on any node), adds a predictor when it has none, fits it on same-speaker pairs of the dataset's training
split with the CFM frozen, measures the held-out duration error against upstream's byte-ratio rule, logs
the loss curve and the errors to MLflow, and reports the model as a Ray Train checkpoint. The driver
registers it as a new version of the registered model (the CFM weights are the base model's, unchanged).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray.train
import ray.train.torch
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.config import DurationPredictorConfig
from flowtts.evaluation.heldout import heldout_duration_mape
from flowtts.model_source import local_model, parse_model_source, resolve_model_source
from flowtts.storage import StorageUri, resolve
from flowtts.training import TrainingData
from flowtts.training.duration_fitting import DurationExamples, train_duration_predictor, with_duration_predictor
from trainer.loop import setup_worker_logging
from trainer.registry import Registration, register_cfm
from trainer.tracking import RunLogger, open_run, tracking_uri_for

logger = logging.getLogger("trainer")
CHECKPOINT_DIR = "model"  # inside the Ray Train checkpoint


class DurationJob(BaseModel):
    """What the user asked for (the options of ``jobs/train_duration.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder of ours
    data: StorageUri  # a dataset folder or URI
    steps: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    seed: int = 0
    predictor: DurationPredictorConfig = Field(default_factory=DurationPredictorConfig)
    name: str | None = None
    storage: StorageUri = Field(default="outputs/ray_train", validate_default=True)  # a folder or a URI
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpu: bool = False
    experiment: str = "flowtts"
    registered_model: str = "flowtts"
    alias: str = "candidate"


@dataclass(frozen=True)
class DurationOutcome:
    metrics: dict[str, float]
    mlflow_run_id: str
    tracking_uri: str
    registration: Registration


def duration_loop(config: dict) -> None:
    """The Ray Train worker (one): fit, measure, log, report the checkpoint."""
    setup_worker_logging()
    job = DurationJob.model_validate(config["job"])
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    mlflow.set_tracking_uri(config["tracking_uri"])
    with local_model(resolve_model_source(job.model)) as folder:  # a registry model is downloaded on this node
        bundle = load_bundle(folder)
    torch.manual_seed(job.seed)  # a new predictor's initial weights and its dropout: --seed reproduces the job
    model = with_duration_predictor(bundle.model, job.predictor).to(ray.train.torch.get_device())
    examples = DurationExamples(TrainingData.from_folder(job.data, bundle.vocab))
    started = time.perf_counter()
    losses = train_duration_predictor(
        model, examples, steps=job.steps, batch_size=job.batch_size, lr=job.learning_rate, seed=job.seed
    )
    logger.info(
        "duration predictor: %d steps in %.1f s, loss %.4f -> %.4f",
        job.steps,
        time.perf_counter() - started,
        losses[0],
        losses[-1],
    )
    run = RunLogger(config["tracking_uri"], config["run_id"])
    for step, loss in enumerate(losses, start=1):
        run.log_metrics(step, {"duration_loss": loss})
    errors = heldout_duration_mape(model, bundle.vocab, job.data)
    run.log_metrics(job.steps, errors)
    run.flush()
    metrics = {"duration_loss": losses[-1], **errors}
    with tempfile.TemporaryDirectory() as tmp:
        info = {
            **bundle.info,
            "base_model": job.model,
            "duration_predictor_steps": job.steps,
            "mlflow_run_id": config["run_id"],
        }
        save_checkpoint(model.cpu(), Path(tmp) / CHECKPOINT_DIR, bundle.vocab, mel=bundle.mel, info=info)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_duration_training(job: DurationJob) -> DurationOutcome:
    tracking_uri_for(job.storage)  # a storage URI needs MLFLOW_TRACKING_URI: say so before anything else
    storage = resolve(job.storage)  # job.storage: a local folder made absolute, or a URI
    model = parse_model_source(job.model).load_uri  # a local path made absolute: workers' cwd differs
    job = job.model_copy(update={"model": model, "name": job.name or f"duration-{time.strftime('%Y%m%d-%H%M%S')}"})
    tags = {"base_model": job.model}
    tracking_uri, run_id = open_run(
        storage.join(job.name),
        storage=storage.uri,
        experiment=job.experiment,
        run_name=job.name,
        params={"duration_job": job.model_dump(mode="json")},
        tags=tags,
    )
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.gpu else {})}
    trainer = TorchTrainer(
        duration_loop,
        train_loop_config={"job": job.model_dump(mode="json"), "tracking_uri": tracking_uri, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=job.gpu, resources_per_worker=resources),
        run_config=RunConfig(name=job.name, storage_path=storage.path, storage_filesystem=storage.fs),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"duration training {job.name} finished without a checkpoint")
    metrics = dict(result.metrics or {})
    with result.checkpoint.as_directory() as folder:
        bundle = load_bundle(Path(folder) / CHECKPOINT_DIR)
        registration = register_cfm(
            bundle.model,
            bundle.vocab,
            bundle.mel,
            bundle.info,
            tracking_uri=tracking_uri,
            run_id=run_id,
            registered_model=job.registered_model,
            alias=job.alias,
            tags={**tags, **{k: f"{v:.2f}" for k, v in metrics.items() if k.startswith("duration_mape")}},
        )
    return DurationOutcome(metrics=metrics, mlflow_run_id=run_id, tracking_uri=tracking_uri, registration=registration)
