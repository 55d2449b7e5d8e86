"""One optimizer update: forward/backward over the micro-batches, clip, AdamW, schedule, EMA."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flowtts.model.duration_predictor import DurationBatch
from flowtts.training.data import Batch
from flowtts.training.recipe import Recipe


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the micro-batches of this rank
    grad_norm: float  # the CFM's gradient norm before clipping (identical on every DDP rank)
    lr: float  # the learning rate this update used
    frames: int  # real (unpadded) mel frames this rank trained on
    skipped: bool  # True when the gradient was not finite and the update was skipped
    duration_loss: float | None = None  # mean duration-predictor loss, when trained jointly


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    recipe: Recipe,
    micro_batches: Sequence[Batch],
    *,
    max_grad_norm: float,
    device: torch.device,
    duration_batches: Sequence[DurationBatch] | None = None,
    duration_loss_weight: float = 1.0,
) -> StepResult:
    """Accumulate gradients over ``micro_batches`` (DDP syncs only on the last), then update once.

    ``model`` is the CFM or its DDP wrapper; the EMA in ``recipe`` tracks the unwrapped module. With
    ``duration_batches`` (one per micro-batch) the duration predictor trains in the same update: its
    loss, times ``duration_loss_weight``, is added to the flow loss.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    if duration_batches is not None and len(duration_batches) != len(micro_batches):
        raise ValueError(f"{len(duration_batches)} duration batches for {len(micro_batches)} micro-batches")
    model.train()
    recipe.optimizer.zero_grad(set_to_none=True)
    total_loss, total_duration_loss = 0.0, 0.0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device)
        duration = duration_batches[i].to(device) if duration_batches is not None else None
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_for(device):
                out = model(batch.mel, batch.text, batch.lens, duration)
            loss = out.loss if duration is None else out.loss + duration_loss_weight * out.duration_loss
            (loss / len(micro_batches)).backward()
        total_loss += float(out.loss.detach())
        if duration is not None:
            total_duration_loss += float(out.duration_loss.detach())
    grad_norm, predictor_norm = clip_gradients(model, max_grad_norm)
    lr = recipe.optimizer.param_groups[0]["lr"]
    skipped = not (math.isfinite(grad_norm) and math.isfinite(predictor_norm))
    if skipped:
        recipe.optimizer.zero_grad(set_to_none=True)
    else:
        recipe.optimizer.step()
        recipe.ema.update()
    recipe.scheduler.step()
    return StepResult(
        loss=total_loss / len(micro_batches),
        grad_norm=grad_norm,
        lr=lr,
        frames=sum(b.frames for b in micro_batches),
        skipped=skipped,
        duration_loss=None if duration_batches is None else total_duration_loss / len(micro_batches),
    )


def clip_gradients(model: torch.nn.Module, max_norm: float) -> tuple[float, float]:
    """Clip the CFM's gradients and the duration predictor's separately (so the CFM's large early gradients
    do not starve the predictor); returns both norms before clipping (0.0 for a model without predictor)."""
    predictor = getattr(model, "module", model).duration_predictor
    if predictor is None:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)), 0.0
    own = {id(p) for p in predictor.parameters()}
    cfm_params = [p for p in model.parameters() if id(p) not in own]
    return (
        float(torch.nn.utils.clip_grad_norm_(cfm_params, max_norm)),
        float(torch.nn.utils.clip_grad_norm_(predictor.parameters(), max_norm)),
    )
