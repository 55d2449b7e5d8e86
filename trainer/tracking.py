"""MLflow for training runs: the run (created once by the driver, continued by every attempt), per-step
metrics and audio samples from rank 0, and where the tracking data lives by default.

Without ``MLFLOW_TRACKING_URI`` the store is an embedded sqlite file beside the Ray Train storage:
``sqlite:///<storage>/mlflow.db`` with artifacts in ``<storage>/mlartifacts``. That needs a local storage
folder: with a storage URI (``s3://...``, what a cluster uses) ``MLFLOW_TRACKING_URI`` must be set.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flowtts.audio import write_audio
from flowtts.evaluation import compare_mels
from flowtts.model import CFM
from flowtts.storage import Location, is_remote
from flowtts.text import Vocab, pad_token_ids
from flowtts.training import Utterance
from trainer.settings import RUN_INFO_FILE

logger = logging.getLogger(__name__)

DB_FILE, ARTIFACT_DIR = "mlflow.db", "mlartifacts"
MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


class TrackingError(RuntimeError):
    """The MLflow run of a training run cannot be found or opened (the message names the run)."""


def tracking_uri_for(storage: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded sqlite store under a local ``storage`` folder; a
    storage URI without ``MLFLOW_TRACKING_URI`` raises ``TrackingError`` (jobs call this before Ray starts)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    if is_remote(storage):
        raise TrackingError(
            f"--storage {storage} is not a local folder, so the default MLflow store (a sqlite file beside "
            "the storage) cannot live there; set MLFLOW_TRACKING_URI to a tracking server every node reaches "
            "(e.g. http://HEAD:5000, `mlflow server` on the head)"
        )
    return f"sqlite:///{Path(storage).resolve() / DB_FILE}"


def artifact_location_for(storage: str | Path, tracking_uri: str) -> str | None:
    """Artifacts beside the embedded store; a tracking server decides for itself (None)."""
    if not is_remote(storage) and tracking_uri == f"sqlite:///{Path(storage).resolve() / DB_FILE}":
        return (Path(storage).resolve() / ARTIFACT_DIR).as_uri()
    return None


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": "1"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


def open_run(
    run_dir: Location,
    *,
    storage: str | Path,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, str]:
    """The MLflow run of a training run: the one recorded in ``run_dir`` (``<storage>/<name>``, a local
    folder or a URI: a resubmission on another node finds it) when resuming, else a new one.

    Returns ``(tracking_uri, run_id)``. Params are logged once, when the run is created (MLflow params are
    immutable); a resumed run keeps them.
    """
    tracking_uri = tracking_uri_for(storage)
    client = MlflowClient(tracking_uri)
    info_file = run_dir.join(RUN_INFO_FILE)
    if info_file.is_file():
        run_id = json.loads(info_file.read_text())["mlflow_run_id"]
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"{info_file} names MLflow run {run_id}, which {tracking_uri} does not have; "
                "use the same MLFLOW_TRACKING_URI as the first submission"
            ) from exc
        logger.info("continuing MLflow run %s", run_id)
        return tracking_uri, run_id
    experiment_id = ensure_experiment(client, experiment, artifact_location_for(storage, tracking_uri))
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    flat = [Param(k, v) for k, v in flatten(params).items()]
    for start in range(0, len(flat), MAX_PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=flat[start : start + MAX_PARAMS_PER_BATCH])
    info_file.write_text(json.dumps({"mlflow_run_id": run.info.run_id, "tracking_uri": tracking_uri}))
    logger.info("created MLflow run %s in experiment %r (%s)", run.info.run_id, experiment, tracking_uri)
    return tracking_uri, run.info.run_id


class RunLogger:
    """Rank 0's handle on the run: buffered per-step metrics, artifacts, samples, system metrics."""

    def __init__(self, tracking_uri: str, run_id: str):
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self._pending: list[Metric] = []
        system_metrics = importlib.util.find_spec("psutil") is not None
        if not system_metrics:
            logger.info("psutil is not installed: MLflow system metrics are off")
        self._active = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in values.items())

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_dict(self, values: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, values, artifact_file)

    def log_sample(self, step: int, sample: SpokenSample, sample_rate: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / f"step_{step:07d}.wav"
            write_audio(wav, sample.audio, sample_rate)
            self.client.log_artifact(self.run_id, str(wav), "samples")
            reference = Path(tmp) / "reference.wav"
            write_audio(reference, sample.reference_audio, sample_rate)
            self.client.log_artifact(self.run_id, str(reference), "samples")
            png = Path(tmp) / f"step_{step:07d}_mel.png"
            plot_mels(sample.reference_mel, sample.mel, png, title=f"step {step}: {sample.text[:60]}")
            self.client.log_artifact(self.run_id, str(png), "samples")
        metrics = compare_mels(sample.reference_mel, sample.mel)
        self.log_metrics(step, {"sample_mcd_dtw": metrics.mcd_dtw, "sample_mel_l1": metrics.mel_l1})

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        mlflow.end_run(status)


# ---------------------------------------------------------------- samples


@dataclass
class SpokenSample:
    text: str
    mel: torch.Tensor  # [frames, n_mels] generated (prompt removed)
    reference_mel: torch.Tensor  # [frames, n_mels]
    audio: torch.Tensor  # [samples]
    reference_audio: torch.Tensor  # [samples]


def speak(model: CFM, utterance: Utterance, vocab: Vocab, vocoder, *, steps: int, seed: int) -> SpokenSample:
    """Upstream's training sample: the clip is the prompt, the text is said twice, the second time is
    generated (duration twice the clip), so the generated half can be compared with the reference."""
    ref = utterance.mel.to(model.device)  # [n, n_mels]
    n = ref.shape[0]
    ids = vocab.encode(f"{utterance.text} {utterance.text}", unknown="space")
    result = model.sample(
        cond=ref[None],
        text=pad_token_ids([ids]),
        duration=2 * n,
        steps=steps,
        cfg_strength=2.0,
        sway_sampling_coef=-1.0,
        seed=seed,
    )
    generated = result.mel[0, n : int(result.duration[0])].float().cpu()  # [n_gen, n_mels]
    audio, reference_audio = (vocoder.decode(m.T[None])[0].float().cpu() for m in (generated, utterance.mel))
    return SpokenSample(
        text=utterance.text,
        mel=generated,
        reference_mel=utterance.mel.float().cpu(),
        audio=audio,
        reference_audio=reference_audio,
    )


def plot_mels(reference: torch.Tensor, generated: torch.Tensor, path: Path, title: str) -> None:
    """PNG with the reference mel above the generated one (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    low, high = float(reference.min()), float(reference.max())  # one colour scale for both
    for ax, mel, label in zip(axes, (reference, generated), ("reference", "generated"), strict=True):
        ax.imshow(mel.T.numpy(), origin="lower", aspect="auto", interpolation="none", vmin=low, vmax=high)
        ax.set_ylabel(f"{label}\nmel bin")
    axes[0].set_title(title)
    axes[1].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
