"""The driver side of a training run: resolve config, vocab and warm start, open the MLflow run, build the
``TorchTrainer`` (Ray Train V2), fit, and register the result.

Resuming is Ray Train V2's: a trainer with the same ``RunConfig(name, storage_path)`` finds the run's
checkpoints and every worker starts from the latest one; the MLflow run id is kept in the run folder
(and in every checkpoint), so the same MLflow run continues. The storage is a local folder or a URI
(``s3://bucket/runs``): Ray Train and everything kept in ``<storage>/<name>/`` go through the filesystem
``flowtts.storage`` resolves, so a resubmission on another node finds the run.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from flowtts.checkpoint import save_checkpoint
from flowtts.config import load_config
from flowtts.storage import Location, resolve
from flowtts.training.data import (
    corpus_fingerprint,
    dataset_text_frontend,
    dataset_texts,
    dataset_vocab,
    manifest_fingerprint,
)
from flowtts.training.warmstart import prepare_start
from trainer.loop import train_loop_per_worker
from trainer.registry import Registration, git_commit, register_model
from trainer.settings import INIT_DIR, TrainJob, TrainSettings
from trainer.tracking import open_run, tracking_uri_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    name: str
    run_dir: str  # <storage>/<name>: a folder or a URI
    checkpoint: str  # the last checkpoint: a folder or a URI
    step: int
    metrics: dict[str, Any]
    mlflow_run_id: str
    tracking_uri: str
    registration: Registration | None


def prepare_run(job: TrainJob) -> TrainSettings:
    """Everything the workers need, decided once: final vocab and config, warm start, MLflow run."""
    overrides = dict(job.overrides)
    if job.duration_predictor:
        overrides.setdefault("model.duration_predictor", {})  # the default predictor config
    tracking_uri_for(job.storage)  # a storage URI needs MLFLOW_TRACKING_URI: say so before reading anything
    config = load_config(job.config).with_overrides(overrides)
    if job.vocoder is not None:  # the samples and the registered model need it: one that cannot load fails now
        from flowtts.synthesis.vocoder import load_vocoder

        load_vocoder(job.vocoder, mel=config.mel)
    data = resolve(job.data).uri  # a local path made absolute, or the URI as given
    storage = resolve(job.storage)
    name = job.name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = prepare_start(
        config, dataset_texts(data), dataset_vocab(data), init_from=job.init_from, init_vocab=job.init_vocab
    )
    run_dir = storage.join(name)
    init_weights = None
    if start.model is not None:
        init_dir = run_dir.join(INIT_DIR)
        if not init_dir.exists():
            info = {"init_from": str(job.init_from), "added_characters": start.added}
            _save_init_weights(start, init_dir, info)
        init_weights = init_dir.uri
    train = start.config.train
    resolved = dict(
        data=data,
        name=name,
        storage=storage.uri,
        max_steps=job.max_steps or train.max_updates,
        checkpoint_every=job.checkpoint_every or train.save_per_updates,
        sample_every=train.log_samples_per_updates,
        init_weights=init_weights,
    )
    job_params = {**job.model_dump(mode="json", exclude={"overrides"}), **resolved}
    tracking_uri, run_id = open_run(
        run_dir,
        storage=storage.uri,
        experiment=job.experiment,
        run_name=name,
        params={
            **start.config.model_dump(mode="json"),
            "job": {**job_params, "vocab_size": len(start.vocab), "added_characters": "".join(start.added)},
        },
        tags=registry_tags(start.config.fingerprint(), data),
    )
    return TrainSettings(
        job=job,
        config=start.config.model_dump(mode="json"),
        vocab=start.vocab.tokens,
        **resolved,
        tracking_uri=tracking_uri,
        mlflow_run_id=run_id,
    )


def _save_init_weights(start, target: Location, info: dict) -> None:
    """The warm-start weights in our format, in the run folder (uploaded when it is a URI)."""
    if target.is_local:
        save_checkpoint(start.model, target.local_path(), start.vocab, mel=start.config.mel, info=info)
        return
    with tempfile.TemporaryDirectory(prefix="flowtts-init-") as tmp:
        folder = save_checkpoint(start.model, Path(tmp) / INIT_DIR, start.vocab, mel=start.config.mel, info=info)
        target.upload_folder(folder)


def registry_tags(config_hash: str, data: str) -> dict[str, str]:
    tags = {
        "config_hash": config_hash,
        "data_manifest_fingerprint": manifest_fingerprint(data),
        "git_commit": os.environ.get("FLOWTTS_GIT_COMMIT") or git_commit(),
    }
    corpus = corpus_fingerprint(data)
    if corpus:
        tags["data_input_fingerprint"] = corpus
    return tags


def build_trainer(settings: TrainSettings) -> TorchTrainer:
    keep = settings.flowtts_config().train.keep_last_n_checkpoints
    job = settings.job
    resources = {"CPU": job.cpus_per_worker, **({"GPU": 1} if job.gpu else {})}
    storage = resolve(settings.storage)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=job.workers,
            use_gpu=job.gpu,
            resources_per_worker=resources,
            placement_strategy=job.placement.upper(),
        ),
        torch_config=TorchConfig(backend="nccl" if job.gpu else "gloo"),
        run_config=RunConfig(
            name=settings.name,
            storage_path=storage.path,
            storage_filesystem=storage.fs,  # flowtts.storage's: endpoint and credentials as for the data
            checkpoint_config=CheckpointConfig(num_to_keep=keep if keep > 0 else None),
            failure_config=FailureConfig(max_failures=job.max_failures),
        ),
    )


def run_training(job: TrainJob, *, register: bool = True) -> TrainOutcome:
    """Fit (resuming when the run has checkpoints) and register the EMA weights of the last checkpoint."""
    settings = prepare_run(job)
    logger.info(
        "run %s: %d worker(s), up to step %d, storage %s, MLflow %s run %s",
        settings.name,
        job.workers,
        settings.max_steps,
        settings.run_dir,
        settings.tracking_uri,
        settings.mlflow_run_id,
    )
    result = build_trainer(settings).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {settings.name} finished without a checkpoint in {settings.run_dir}")
    metrics = dict(result.metrics or {})
    registration = None
    with result.checkpoint.as_directory() as folder:
        if register:
            tags = registry_tags(settings.flowtts_config().fingerprint(), settings.data)
            registration = register_model(
                folder,
                tracking_uri=settings.tracking_uri,
                run_id=settings.mlflow_run_id,
                registered_model=job.registered_model,
                alias=job.alias,
                vocoder=job.vocoder,
                tags=tags,
                text_frontend=dataset_text_frontend(settings.data),
            )
    return TrainOutcome(
        name=settings.name,
        run_dir=settings.run_dir.uri,
        checkpoint=checkpoint_location(settings.run_dir, result.checkpoint.path).uri,
        step=int(metrics.get("step", 0)),
        metrics=metrics,
        mlflow_run_id=settings.mlflow_run_id,
        tracking_uri=settings.tracking_uri,
        registration=registration,
    )


def checkpoint_location(run_dir: Location, fs_path: str) -> Location:
    """A checkpoint Ray Train reports (a path on the run's filesystem) as a location users can name."""
    return run_dir.join(posixpath.relpath(fs_path, run_dir.path))
