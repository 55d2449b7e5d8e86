"""The Ray Train worker: restore or start, stream frame-budget batches, step, log, checkpoint, sample.

Every rank builds the same model and the same deterministic batch plan and trains on its own share of
each epoch's batches. Checkpoints go through ``ray.train.report``: rank 0 writes weights, EMA,
optimizer, schedule, position and config; every rank adds its RNG state. After a worker failure or a
re-submission of the same run name, ``ray.train.get_checkpoint()`` returns the latest one and training
continues at the same step with the same next batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from flowtts.checkpoint import load_checkpoint
from flowtts.config import FlowTTSConfig
from flowtts.model import CFM, build_model
from flowtts.storage import resolve
from flowtts.text import Vocab
from flowtts.training import (
    BatchFeed,
    BatchPosition,
    EpochPlan,
    Recipe,
    TrainingData,
    TrainState,
    build_recipe,
    load_train_state,
    restore_rank_rng,
    save_train_state,
    train_step,
)
from flowtts.training.data import sample_utterance
from flowtts.training.duration_fitting import DurationExamples
from flowtts.training.state import VOCAB_FILE
from trainer.settings import TrainSettings

logger = logging.getLogger("trainer")


def setup_worker_logging() -> None:
    """INFO progress lines from this package and flowtts on the worker's stderr (shown by the driver)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    for name in ("trainer", "flowtts"):
        named = logging.getLogger(name)
        if not named.handlers:
            named.addHandler(handler)
        named.setLevel(logging.INFO)
        named.propagate = False  # Ray's root handler would print every line a second time


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_fingerprint(rows_per_rank: list[list[int]]) -> str:
    """Names the batch every rank trains on next (16 hex digits of a sha256)."""
    return hashlib.sha256(json.dumps(rows_per_rank).encode()).hexdigest()[:16]


def build_cfm(config: FlowTTSConfig, init_weights: str | None) -> CFM:
    train = config.train
    model = build_model(
        config.model,
        audio_drop_prob=train.audio_drop_prob,
        cond_drop_prob=train.cond_drop_prob,
        frac_lengths_mask=train.frac_lengths_mask,
    )
    if init_weights is not None:  # a folder in the run's storage: downloaded to a temporary folder when remote
        with resolve(init_weights).local_folder() as folder:
            model.load_state_dict(load_checkpoint(folder).state_dict())
    return model


@dataclass
class Progress:
    """Rank 0's window of recent steps for the progress line, and the totals for the final summary."""

    max_steps: int
    start_step: int
    window: deque = field(default_factory=lambda: deque(maxlen=50))
    started: float = field(default_factory=time.perf_counter)
    frames: float = 0.0
    wait: float = 0.0
    busy: float = 0.0

    def add(self, seconds: float, frames: float, wait: float, loss: float) -> None:
        self.window.append((seconds, loss))
        self.frames += frames
        self.wait += wait
        self.busy += seconds

    def line(self, step: int, metrics: dict[str, float]) -> str:
        mean_step = sum(s for s, _ in self.window) / len(self.window)
        eta = time.strftime("%H:%M:%S", time.gmtime(mean_step * (self.max_steps - step)))
        return (
            f"step {step}/{self.max_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
            f"grad_norm {metrics['grad_norm']:.3f} frames/s {metrics['frames_per_sec']:.0f} "
            f"data wait {metrics['data_wait_share']:.1%} ETA {eta}"
        )

    def summary(self, step: int) -> str:
        losses = [loss for _, loss in self.window][-10:]
        done = step - self.start_step
        busy = max(self.busy, 1e-9)
        return (
            f"trained steps {self.start_step + 1}..{step} ({done} updates) in "
            f"{time.perf_counter() - self.started:.1f} s; mean loss of the last {len(losses)} steps "
            f"{sum(losses) / max(len(losses), 1):.4f}; {self.frames / busy:.0f} frames/s; "
            f"data wait {self.wait / busy:.1%} of step time"
        )


class Worker:
    """One rank's training state and the steps it takes."""

    def __init__(self, settings: TrainSettings):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.settings = settings
        self.config = settings.flowtts_config()
        self.vocab: Vocab = settings.final_vocab()
        self.device = ray.train.torch.get_device()
        train = self.config.train
        self.data = TrainingData.from_folder(settings.data, self.vocab)
        self.plan = EpochPlan(
            self.data.lengths,
            train.batch_size_per_gpu,
            train.max_samples,
            seed=settings.job.seed,
            rank=self.rank,
            world=self.world,
        )
        seed_everything(settings.job.seed)  # the same initial weights on every rank
        self.model = build_cfm(self.config, settings.init_weights).to(self.device)
        self.recipe: Recipe = build_recipe(self.model, train)
        # joint training: the model has a duration predictor, trained on same-speaker pairs of this rank's data
        self.duration = DurationExamples(self.data) if self.model.duration_predictor is not None else None
        self.state, self.restored_from = self._restore()
        self.ddp = ray.train.torch.prepare_model(self.model, move_to_device=False) if self.world > 1 else self.model
        self.sample_parts: tuple | None = None  # (utterance, vocoder), loaded at the first sample

    def _restore(self) -> tuple[TrainState, TrainState | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            seed_everything(self.settings.job.seed + self.rank)
            fresh = TrainState(
                step=0,
                epoch=0,
                batch_index=0,
                config=self.config.model_dump(mode="json"),
                mlflow_run_id=self.settings.mlflow_run_id,
            )
            return fresh, None
        with checkpoint.as_directory() as folder:
            saved_vocab = Vocab.load(Path(folder) / VOCAB_FILE)
            if saved_vocab != self.vocab:
                raise ValueError(
                    f"the checkpoint in {checkpoint.path} was trained with another vocab "
                    f"({len(saved_vocab)} vs {len(self.vocab)} tokens); use a new --name"
                )
            state = load_train_state(folder, model=self.model, recipe=self.recipe)
            if not restore_rank_rng(folder, self.rank):
                logger.warning(
                    "no RNG state for rank %d in %s (world size changed?): reseeding", self.rank, checkpoint.path
                )
                seed_everything(self.settings.job.seed + self.rank + 7919 * state.step)
        saved_world = state.info.get("world", self.world)
        if saved_world != self.world:  # positions are per rank share: start the next epoch afresh
            logger.warning(
                "checkpoint of %d workers resumed by %d: continuing at the start of epoch %d",
                saved_world,
                self.world,
                state.epoch + 1,
            )
            state.epoch, state.batch_index = state.epoch + 1, 0
        logger.info(
            "rank %d resumes at step %d, epoch %d, batch %d", self.rank, state.step, state.epoch, state.batch_index
        )
        return state, state

    def position(self) -> BatchPosition:
        return BatchPosition(self.state.epoch, self.state.batch_index)

    def next_batch_fingerprint(self, position: BatchPosition) -> tuple[str, list[list[int]]]:
        rows = [self.plan.batch_at(position, rank) for rank in range(self.world)]
        return batch_fingerprint(rows), rows

    def reduce(self, values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
        """Sums (or ``op``) over ranks (one small all-reduce per step)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    def save_and_report(self, step: int, position: BatchPosition, metrics: dict[str, float]) -> None:
        fingerprint, _ = self.next_batch_fingerprint(position)
        self.state = TrainState(
            step=step,
            epoch=position.epoch,
            batch_index=position.index,
            config=self.config.model_dump(mode="json"),
            mlflow_run_id=self.settings.mlflow_run_id,
            info={"next_batch": fingerprint, "world": self.world, "seed": self.settings.job.seed},
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_train_state(
                tmp, model=self.model, recipe=self.recipe, state=self.state, vocab=self.vocab, rank=self.rank
            )
            ray.train.report(
                {**metrics, "step": step, "epoch": position.epoch, "next_batch": fingerprint},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_{step:08d}",
            )


def train_loop_per_worker(loop_config: dict) -> None:
    setup_worker_logging()
    settings = TrainSettings.model_validate(loop_config)
    torch.set_num_threads(max(1, int(settings.job.cpus_per_worker)))
    worker = Worker(settings)
    run = _open_run_logger(worker) if worker.rank == 0 else None
    step, position = worker.state.step, worker.position()
    progress = Progress(max_steps=settings.max_steps, start_step=step)
    feed = BatchFeed(worker.data, worker.plan, position)
    accumulation = worker.config.train.grad_accumulation_steps
    last_metrics: dict[str, float] = {}
    try:
        while step < settings.max_steps:
            started = time.perf_counter()
            micro_batches, waited = [], 0.0
            for _ in range(accumulation):
                batch_position, batch, wait = feed.next()
                micro_batches.append(batch)
                waited += wait
                position = worker.plan.advance(batch_position)
            duration_batches = (
                [worker.duration.sample(len(batch.rows)) for batch in micro_batches]
                if worker.duration is not None
                else None
            )
            result = train_step(
                worker.ddp,
                worker.recipe,
                micro_batches,
                max_grad_norm=worker.config.train.max_grad_norm,
                device=worker.device,
                duration_batches=duration_batches,
                duration_loss_weight=worker.config.train.duration_loss_weight,
            )
            seconds = time.perf_counter() - started
            loss_sum, frames, wait_sum, duration_sum = worker.reduce(
                [result.loss, result.frames, waited, result.duration_loss or 0.0]
            )
            step += 1
            last_metrics = {
                "loss": loss_sum / worker.world,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "frames_per_sec": frames / seconds,
                "data_wait_share": wait_sum / worker.world / seconds,
                "skipped_update": float(result.skipped),
            }
            if worker.duration is not None:
                last_metrics["duration_loss"] = duration_sum / worker.world
            if run is not None:
                progress.add(seconds, frames, wait_sum / worker.world, last_metrics["loss"])
                run.log_metrics(step, last_metrics)
                if step % settings.job.log_every == 0 or step == settings.max_steps:
                    run.flush()
                    logger.info(progress.line(step, last_metrics))
                if settings.sample_every and step % settings.sample_every == 0:
                    _log_sample(run, worker, step)
            if step % settings.checkpoint_every == 0 or step == settings.max_steps:
                worker.save_and_report(step, position, last_metrics)
    finally:
        feed.close()
    (peak_rss,) = worker.reduce([peak_rss_mb()], op=dist.ReduceOp.MAX)
    if run is not None:
        if step > progress.start_step:
            logger.info(progress.summary(step))
            run.log_metrics(step, {"data_wait_share_mean": progress.wait / max(progress.busy, 1e-9)})
        run.log_metrics(step, {"peak_rss_mb": peak_rss})
        if worker.duration is not None:
            _log_duration_mape(run, worker, step)
        run.finish()


def _open_run_logger(worker: Worker):
    from trainer.tracking import RunLogger

    settings = worker.settings
    run = RunLogger(settings.tracking_uri, settings.mlflow_run_id)
    fingerprint, rows = worker.next_batch_fingerprint(worker.position())
    restored = worker.restored_from
    run.log_dict(
        {
            "start_step": worker.state.step,
            "resumed": restored is not None,
            "epoch": worker.state.epoch,
            "batch_index": worker.state.batch_index,
            "first_batch": fingerprint,
            "first_batch_rows": rows,
            "checkpoint_next_batch": restored.info.get("next_batch") if restored else None,
            "world_size": worker.world,
            "max_steps": settings.max_steps,
            "config_fingerprint": worker.config.fingerprint(),
            "started_at": time.time(),  # Unix seconds: how long a restart took, next to the failure's time
        },
        f"attempts/start_step_{worker.state.step:07d}.json",
    )
    run.log_metrics(
        worker.state.step,
        {
            "padding_waste": worker.plan.padding_waste(),
            "dropped_items": len(worker.plan.base.dropped),
            "dropped_batches_per_epoch": worker.plan.remainder_per_epoch,
            "batches_per_epoch_per_rank": worker.plan.batches_per_epoch,
        },
    )
    run.flush()
    return run


def _log_duration_mape(run, worker: Worker, step: int) -> None:
    """Held-out duration error of the EMA model's predictor vs upstream's byte-ratio rule."""
    from flowtts.evaluation.heldout import heldout_duration_mape

    errors = heldout_duration_mape(worker.recipe.ema.ema_model, worker.vocab, worker.settings.data)
    if errors:
        run.log_metrics(step, errors)
        run.flush()


def _log_sample(run, worker: Worker, step: int) -> None:
    from flowtts.synthesis import load_vocoder
    from trainer.tracking import speak

    if worker.sample_parts is None:
        vocoder = load_vocoder(worker.settings.job.vocoder, mel=worker.config.mel, device=worker.device)
        worker.sample_parts = (sample_utterance(worker.settings.data), vocoder)
    utterance, vocoder = worker.sample_parts
    started = time.perf_counter()
    sample = speak(
        worker.recipe.ema.ema_model,
        utterance,
        worker.vocab,
        vocoder,
        steps=worker.settings.job.sample_steps,
        seed=worker.settings.job.seed,
    )
    run.log_sample(step, sample, worker.config.mel.target_sample_rate)
    logger.info("step %d: logged a sample (%.1f s)", step, time.perf_counter() - started)
