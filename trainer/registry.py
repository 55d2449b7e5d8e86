"""The end of a training run: EMA weights exported, logged as an MLflow pyfunc model, registered, aliased."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from flowtts.checkpoint import export_f5_checkpoint, load_state_strict, read_official_state, save_checkpoint
from flowtts.config import FlowTTSConfig, MelConfig
from flowtts.model import CFM, build_model
from flowtts.model_source import CHECKPOINT_ARTIFACT
from flowtts.pyfunc import OFFICIAL_ARTIFACT, VOCODER_ARTIFACT, FlowTTSPyfunc, pyfunc_signature
from flowtts.storage import is_remote, resolve
from flowtts.text import TextFrontend, Vocab
from flowtts.text.frontend import INFO_KEY as FRONTEND_INFO_KEY
from flowtts.training.state import EMA_FILE, read_train_state
from flowtts.training.state import load_vocab as load_state_vocab

logger = logging.getLogger(__name__)

RUNTIME_PACKAGES = ("torch", "torchaudio", "vocos", "numpy", "soundfile", "safetensors", "pydantic", "pyyaml", "pandas")
MODEL_NAME_IN_RUN = "model"
OFFICIAL_FILE = "model_ema.safetensors"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    run_id: str
    step: int

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def ema_model_from_state(folder: str | Path) -> tuple[CFM, FlowTTSConfig, int]:
    """The EMA weights of a training-state folder as a CFM (eval mode), with its config and step."""
    state = read_train_state(folder)
    config = FlowTTSConfig.model_validate(state.config)
    model = build_model(config.model)
    ema_file = Path(folder) / EMA_FILE
    load_state_strict(model, read_official_state(ema_file), source=str(ema_file))
    return model.eval(), config, state.step


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the repository holding this code, or ``unknown`` (e.g. a Ray job's unpacked working dir)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def runtime_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


def register_model(
    state_folder: str | Path,
    *,
    tracking_uri: str,
    run_id: str,
    registered_model: str,
    alias: str,
    tags: dict[str, str],
    vocoder: str | Path | None = None,
    text_frontend: TextFrontend | None = None,
) -> Registration:
    """Register the EMA weights of a training-state folder (see ``register_cfm``); ``text_frontend`` (the
    dataset's, from its manifest) is recorded in the model's metadata for synthesis to read text with."""
    model, config, step = ema_model_from_state(state_folder)
    info = {
        "step": step,
        "mlflow_run_id": run_id,
        "config_name": config.name,
        "train": config.train.model_dump(mode="json"),
        **tags,
    }
    if text_frontend is not None:
        info[FRONTEND_INFO_KEY] = text_frontend.model_dump()
    return register_cfm(
        model,
        load_state_vocab(state_folder),
        config.mel,
        info,
        tracking_uri=tracking_uri,
        run_id=run_id,
        registered_model=registered_model,
        alias=alias,
        tags=tags,
        vocoder=vocoder,
    )


def register_cfm(
    model: CFM,
    vocab: Vocab,
    mel: MelConfig,
    info: dict,
    *,
    tracking_uri: str,
    run_id: str,
    registered_model: str,
    alias: str,
    tags: dict[str, str],
    vocoder: str | Path | None = None,
) -> Registration:
    """Export the weights (our folder with ``info`` + official ``.safetensors``), log them as a pyfunc model
    in the run (with ``vocoder`` when it is a Vocos folder: a path or a URI), register a new version with
    ``tags`` and point ``alias`` at it."""
    step = int(info.get("step", 0))
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as downloads:
        folder = save_checkpoint(model, Path(tmp) / CHECKPOINT_ARTIFACT, vocab, mel=mel, info=info)
        official = Path(tmp) / OFFICIAL_FILE
        export_f5_checkpoint(model, official, step=step)
        artifacts = {CHECKPOINT_ARTIFACT: str(folder), OFFICIAL_ARTIFACT: str(official)}
        if vocoder is not None and (is_remote(vocoder) or Path(vocoder).is_dir()):  # a repo id is not attached
            artifacts[VOCODER_ARTIFACT] = str(downloads.enter_context(resolve(vocoder).local_folder()))
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN,
                python_model=FlowTTSPyfunc(),
                artifacts=artifacts,
                signature=pyfunc_signature(),
                pip_requirements=runtime_requirements(),
                tags=tags,
            )
    version = mlflow.register_model(logged.model_uri, registered_model, tags=tags)
    client.set_registered_model_alias(registered_model, alias, version.version)
    registration = Registration(
        name=registered_model, version=str(version.version), alias=alias, run_id=run_id, step=step
    )
    logger.info(
        "registered %s version %s (step %d) as %s", registered_model, version.version, step, registration.model_uri
    )
    return registration
