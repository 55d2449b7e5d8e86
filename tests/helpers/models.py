"""The small test model: a few-thousand-parameter CFM of each backbone, upstream-style text settings.

Upstream zero-initialises the adaLN linears, ``norm_out``, ``proj_out`` and the GRN gains, so an untrained
model's velocity is all zeros; ``randomized`` gives those parameters seeded random values."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from flowtts.checkpoint import save_checkpoint
from flowtts.config import ModelConfig
from flowtts.model import CFM, build_model
from flowtts.text import Vocab, normalize_vietnamese


def small_model_config(text_num_embeds: int, backbone: str = "DiT", **overrides) -> ModelConfig:
    """dim 64, depth 2, 2 heads of 32, ff_mult 2; DiT with a 32-dim text embedding and one ConvNeXt layer,
    UNetT and MMDiT with upstream's text defaults. ``overrides`` change any field."""
    text = {"text_dim": 32, "conv_layers": 1} if backbone == "DiT" else {}
    values = {"backbone": backbone, "dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "ff_mult": 2, **text}
    return ModelConfig(**{**values, "text_num_embeds": text_num_embeds, **overrides})


def randomized(model: CFM, seed: int = 0, keep_zero: tuple[str, ...] = ()) -> CFM:
    """Seeded N(0, 0.1^2) values for every all-zero parameter except names ending in ``keep_zero``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.any() and not name.endswith(keep_zero):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def save_tiny_model(folder: Path, texts: list[str], seed: int) -> Path:
    """An untrained small DiT checkpoint folder whose vocab covers ``texts`` and ASCII letters/digits."""
    normalized = [normalize_vietnamese(text) for text in texts]
    vocab = Vocab.from_texts([*normalized, string.ascii_letters + string.digits + ",.!?;:'-"])
    torch.manual_seed(seed)
    config = small_model_config(len(vocab))
    return save_checkpoint(build_model(config), folder, vocab, info={"preset": "serve-test", "seed": seed})


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """The same parameter and buffer names, in order, with equal tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
