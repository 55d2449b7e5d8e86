"""One loader turns checkpoints into models: official F5-TTS files and our own format.

Official formats (facts in the F5-TTS reference):
- trainer ``.pt``: ``model_state_dict`` (online) and ``ema_model_state_dict`` (``ema_model.`` prefix plus
  ``initted`` and ``step``), optimizer, scheduler, ``update``; pruned releases keep only the EMA dict;
- release ``.safetensors``: the flat EMA state dict.
Our format: a folder with ``model.safetensors`` (CFM state dict), ``vocab.txt`` and ``flowtts.json``
(format version, model config, mel config). Reading ``.pt`` never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flowtts import __version__
from flowtts.config import MelConfig, ModelConfig
from flowtts.model import CFM, build_model
from flowtts.text import Vocab

FORMAT_VERSION = 1
EMA_PREFIX = "ema_model."
# Keys of official files that are not model weights: EMA bookkeeping and the pre-Nov-2024 persistent mel.
OFFICIAL_NON_WEIGHT_KEYS = (
    "initted",
    "step",
    "mel_spec.mel_stft.mel_scale.fb",
    "mel_spec.mel_stft.spectrogram.window",
)
# Our additions to the CFM state dict that official files never have.
OUR_ONLY_PREFIXES = ("duration_predictor.",)
TEXT_EMBED_KEY = "transformer.text_embed.text_embed.weight"
DURATION_EMBED_KEY = "duration_predictor.encoder.embed.weight"
WEIGHTS_FILE, VOCAB_FILE, SIDECAR_FILE = "model.safetensors", "vocab.txt", "flowtts.json"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names the keys and shapes involved."""


@dataclass
class ModelBundle:
    """A loaded model with what is needed to use it."""

    model: CFM
    vocab: Vocab | None
    mel: MelConfig
    info: dict[str, Any]


# ---------------------------------------------------------------- official F5-TTS files


def read_official_state(path: str | Path, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The CFM state dict (``transformer.*`` keys) stored in an official ``.pt`` or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        raw = load_file(str(path))
    elif path.suffix in {".pt", ".pth", ".ckpt"}:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        key = "ema_model_state_dict" if use_ema or "model_state_dict" not in checkpoint else "model_state_dict"
        if key not in checkpoint:
            raise CheckpointError(f"{path}: no {key!r} in checkpoint (top-level keys: {sorted(checkpoint)})")
        raw = checkpoint[key]
    else:
        raise CheckpointError(f"{path}: unknown checkpoint extension {path.suffix!r} (use .pt or .safetensors)")
    state = {k.removeprefix(EMA_PREFIX): v for k, v in raw.items()}
    return {k: v for k, v in state.items() if k not in OFFICIAL_NON_WEIGHT_KEYS}


def load_f5_checkpoint(path: str | Path, config: dict[str, Any] | ModelConfig, *, use_ema: bool = True) -> CFM:
    """Load an official F5-TTS checkpoint strictly into a model built from ``config``; eval mode."""
    model = build_model(ModelConfig.from_upstream(config))
    load_state_strict(model, read_official_state(path, use_ema=use_ema), source=str(path))
    return model.eval()


def export_f5_checkpoint(model: CFM, path: str | Path, *, step: int = 0) -> None:
    """Write the official format: ``.safetensors`` (flat EMA dict) or ``.pt`` (pruned ``ema_model_state_dict``)."""
    path = Path(path)
    ema = {
        EMA_PREFIX + k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith(OUR_ONLY_PREFIXES)
    }
    ema["initted"] = torch.tensor(True)
    ema["step"] = torch.tensor(step, dtype=torch.int64)
    if path.suffix == ".safetensors":
        _atomic(path, lambda tmp: save_file(ema, tmp, metadata={"format": "pt"}))
    elif path.suffix == ".pt":
        _atomic(path, lambda tmp: torch.save({"ema_model_state_dict": ema}, tmp))
    else:
        raise CheckpointError(f"{path}: export needs a .pt or .safetensors file name")


def load_state_strict(model: CFM, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with errors that say what is wrong and how to fix it."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.startswith(OUR_ONLY_PREFIXES)}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k]))
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:8]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:8]}")
    for key, got, want in mismatched:
        hint = ""
        if key == TEXT_EMBED_KEY:
            hint = (
                f" (vocab size mismatch: the checkpoint has {got[0] - 1} tokens, the config "
                f"text_num_embeds={want[0] - 1}; set text_num_embeds to match, or extend the vocab with "
                "flowtts.checkpoint.extend_vocab to fine-tune with new characters)"
            )
        problems.append(f"shape mismatch for {key}: checkpoint {got} vs model {want}{hint}")
    if problems:
        raise CheckpointError(f"{source} does not fit a {model.config.backbone} model: " + "; ".join(problems))
    model.load_state_dict(state, strict=not optional)


# ---------------------------------------------------------------- vocab extension


def extend_vocab(model: CFM, vocab: Vocab, symbols: list[str], *, seed: int = 666) -> tuple[CFM, Vocab, list[str]]:
    """Append symbols to the vocab and grow the text embeddings: old rows kept exactly, new rows N(0, 1)."""
    new_vocab, added = vocab.extend(symbols)
    if not added:
        return model, vocab, []
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for key in (TEXT_EMBED_KEY, DURATION_EMBED_KEY):
        if key in state:
            old = state[key]
            extra = torch.randn(len(added), old.shape[1], generator=generator).to(old.dtype)
            state[key] = torch.cat([old.cpu(), extra], dim=0)
    grown = build_model(model.config.with_vocab_size(len(new_vocab)))
    grown.load_state_dict(state, strict=True)
    return grown.to(model.device).train(model.training), new_vocab, added


# ---------------------------------------------------------------- our format


def save_checkpoint(
    model: CFM, folder: str | Path, vocab: Vocab, *, mel: MelConfig | None = None, info: dict[str, Any] | None = None
) -> Path:
    """Write our format into ``folder`` atomically (a half-written folder is never visible)."""
    if len(vocab) != model.config.text_num_embeds:
        raise CheckpointError(f"vocab has {len(vocab)} tokens but the model expects {model.config.text_num_embeds}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "flowtts", "version": str(FORMAT_VERSION)})
    vocab.save(staging / VOCAB_FILE)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "flowtts_version": __version__,
        "model": model.config.model_dump(mode="json"),
        "mel": (mel or MelConfig()).model_dump(mode="json"),
        "info": info or {},
    }
    (staging / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, ensure_ascii=False), encoding="utf-8")
    _replace_dir(staging, folder)
    return folder


def load_bundle(folder: str | Path) -> ModelBundle:
    """Read our format: model (eval mode), vocab, mel settings and free-form info."""
    folder = Path(folder)
    sidecar_path = folder / SIDECAR_FILE
    if not sidecar_path.is_file():
        raise CheckpointError(f"{folder} is not a flowtts checkpoint folder (no {SIDECAR_FILE})")
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    if sidecar.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: format_version {sidecar.get('format_version')} is not {FORMAT_VERSION}")
    model = build_model(ModelConfig.model_validate(sidecar["model"]))
    load_state_strict(model, load_file(str(folder / WEIGHTS_FILE)), source=str(folder))
    return ModelBundle(
        model=model.eval(),
        vocab=Vocab.load(folder / VOCAB_FILE),
        mel=MelConfig.model_validate(sidecar["mel"]),
        info=sidecar.get("info", {}),
    )


def load_checkpoint(folder: str | Path) -> CFM:
    return load_bundle(folder).model


# ---------------------------------------------------------------- file helpers


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _replace_dir(staging: Path, folder: Path) -> None:
    """Swap ``staging`` into place; an existing ``folder`` is moved aside first and then removed."""
    if folder.exists():
        trash = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-old-"))
        os.replace(folder, trash / "old")
        os.replace(staging, folder)
        shutil.rmtree(trash)
    else:
        os.replace(staging, folder)
