"""The training recipe from ``TrainConfig``: AdamW, warmup-then-decay schedule, EMA of the weights.

Upstream facts (F5-TTS reference, section 7): AdamW with torch defaults apart from lr and weight decay;
linear warmup from 1e-8 of the peak over ``num_warmup_updates`` optimizer updates, then linear decay to
1e-8 of the peak at ``max_updates``; ``ema_pytorch.EMA(model, include_online_model=False)`` updated once
per optimizer update (library defaults beta 0.9999, update_after_step 100, update_every 10, which the
presets may override).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from ema_pytorch import EMA
from torch.optim.lr_scheduler import LambdaLR

from flowtts.config import TrainConfig
from flowtts.model import CFM

MIN_LR_FACTOR = 1e-8  # upstream's LinearLR start (warmup) and end (decay) factor


@dataclass
class Recipe:
    """The objects one optimizer update touches, besides the model."""

    optimizer: torch.optim.AdamW
    scheduler: LambdaLR
    ema: EMA


def lr_factor(update: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate after ``update`` optimizer updates."""
    if update < warmup:
        return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * update / warmup
    decay = max(total - warmup, 1)
    done = min(update - warmup, decay)
    return 1 - (1 - MIN_LR_FACTOR) * done / decay


def lr_schedule(train: TrainConfig) -> Callable[[int], float]:
    """The schedule as a plain function of the update count (LambdaLR stores no state for functions)."""
    warmup, total = train.num_warmup_updates, train.max_updates

    def factor(update: int) -> float:
        return lr_factor(update, warmup, total)

    return factor


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        model.parameters(), lr=train.learning_rate, betas=train.betas, weight_decay=train.weight_decay, fused=fused
    )


def build_ema(model: CFM, train: TrainConfig) -> EMA:
    """EMA of the online weights; the online model is not stored inside (``include_online_model=False``)."""
    return EMA(
        model,
        include_online_model=False,
        beta=train.ema_beta,
        update_after_step=train.ema_update_after_step,
        update_every=train.ema_update_every,
    )


def build_recipe(model: CFM, train: TrainConfig) -> Recipe:
    """Optimizer, schedule and EMA for ``model`` (the unwrapped module, already on its device)."""
    optimizer = build_optimizer(model, train)
    return Recipe(optimizer=optimizer, scheduler=LambdaLR(optimizer, lr_schedule(train)), ema=build_ema(model, train))
