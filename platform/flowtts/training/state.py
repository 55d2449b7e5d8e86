"""Everything needed to continue training exactly: weights, EMA, optimizer, schedule, position, RNG.

A state folder holds ``model.safetensors`` (online CFM weights), ``ema.safetensors`` (the ``EMA``
module's state: ``ema_model.*``, ``initted``, ``step``), ``optimizer.pt`` (optimizer and scheduler
state dicts, loadable with ``torch.load(weights_only=True)``), ``vocab.txt``, ``train_state.json``
(step, position, MLflow run id, config, info) and one ``rng_rank{r}.pt`` per DDP rank, since every
rank draws its own noise, spans and dropout.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flowtts.model import CFM
from flowtts.text import Vocab
from flowtts.training.recipe import Recipe

MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = "model.safetensors", "ema.safetensors", "optimizer.pt"
STATE_FILE, VOCAB_FILE = "train_state.json", "vocab.txt"


class TrainStateError(ValueError):
    """A state folder is incomplete or does not belong to this model (the message names the file)."""


@dataclass
class TrainState:
    """The JSON part of a training state; the position names the *next* batch to train on."""

    step: int  # optimizer updates done
    epoch: int
    batch_index: int  # index of the next batch within this rank's share of ``epoch``
    config: dict[str, Any]  # FlowTTSConfig.model_dump(mode="json")
    mlflow_run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, in weights_only-loadable types."""
    version, words, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))
    saved = state["numpy"]
    key = saved["key"].numpy().astype(np.uint32)
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": key, "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(
    folder: str | Path, *, model: CFM, recipe: Recipe, state: TrainState, vocab: Vocab, rank: int = 0
) -> Path:
    """Rank 0 writes weights, optimizer and JSON; every rank writes its own RNG file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(capture_rng(), folder / rng_file(rank))
    if rank != 0:
        return folder
    save_file(_cpu(model.state_dict()), str(folder / MODEL_FILE))
    save_file(_cpu(recipe.ema.state_dict()), str(folder / EMA_FILE))
    torch.save(
        {"optimizer": recipe.optimizer.state_dict(), "scheduler": recipe.scheduler.state_dict()},
        folder / OPTIMIZER_FILE,
    )
    vocab.save(folder / VOCAB_FILE)
    text = json.dumps(asdict(state), indent=2, ensure_ascii=False)
    (folder / STATE_FILE).write_text(text, encoding="utf-8")
    return folder


def read_train_state(folder: str | Path) -> TrainState:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise TrainStateError(f"{path} is missing: {folder} is not a training state folder")
    return TrainState(**json.loads(path.read_text(encoding="utf-8")))


def load_train_state(folder: str | Path, *, model: CFM, recipe: Recipe) -> TrainState:
    """Load weights, EMA, optimizer and schedule in place; returns the JSON part."""
    folder = Path(folder)
    state = read_train_state(folder)
    for name in (MODEL_FILE, EMA_FILE, OPTIMIZER_FILE):
        if not (folder / name).is_file():
            raise TrainStateError(f"{folder / name} is missing from the training state")
    model.load_state_dict(load_file(str(folder / MODEL_FILE)))
    recipe.ema.load_state_dict(load_file(str(folder / EMA_FILE)))
    device = next(model.parameters()).device
    optim = torch.load(folder / OPTIMIZER_FILE, map_location=device, weights_only=True)
    recipe.optimizer.load_state_dict(optim["optimizer"])
    recipe.scheduler.load_state_dict(optim["scheduler"])
    return state


def restore_rank_rng(folder: str | Path, rank: int) -> bool:
    """Restore the RNG states ``rank`` saved; False when the folder has none for it (other world size)."""
    path = Path(folder) / rng_file(rank)
    if not path.is_file():
        return False
    restore_rng(torch.load(path, weights_only=True))
    return True


def load_vocab(folder: str | Path) -> Vocab:
    return Vocab.load(Path(folder) / VOCAB_FILE)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
