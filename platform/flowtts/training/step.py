"""One optimizer update: forward/backward over the micro-batches, clip, AdamW, schedule, EMA."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flowtts.training.data import Batch
from flowtts.training.recipe import Recipe


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the micro-batches of this rank
    grad_norm: float  # total gradient norm before clipping (identical on every DDP rank)
    lr: float  # the learning rate this update used
    frames: int  # real (unpadded) mel frames this rank trained on
    skipped: bool  # True when the gradient was not finite and the update was skipped


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, recipe: Recipe, micro_batches: Sequence[Batch], *,
               max_grad_norm: float, device: torch.device) -> StepResult:
    """Accumulate gradients over ``micro_batches`` (DDP syncs only on the last), then update once.

    ``model`` is the CFM or its DDP wrapper; the EMA in ``recipe`` tracks the unwrapped module.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    model.train()
    recipe.optimizer.zero_grad(set_to_none=True)
    total_loss = 0.0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device)
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_for(device):
                loss = model(batch.mel, batch.text, batch.lens).loss
            (loss / len(micro_batches)).backward()
        total_loss += float(loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
    lr = recipe.optimizer.param_groups[0]["lr"]
    skipped = not math.isfinite(grad_norm)
    if skipped:
        recipe.optimizer.zero_grad(set_to_none=True)
    else:
        recipe.optimizer.step()
        recipe.ema.update()
    recipe.scheduler.step()
    return StepResult(loss=total_loss / len(micro_batches), grad_norm=grad_norm, lr=lr,
                      frames=sum(b.frames for b in micro_batches), skipped=skipped)
