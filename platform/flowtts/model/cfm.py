"""Conditional flow matching around a backbone: the training loss and the ODE sampler (Euler or midpoint)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowtts.config import ModelConfig
from flowtts.model.backbones import BACKBONES, Backbone, TextCache
from flowtts.model.duration_predictor import DurationBatch, DurationPredictor
from flowtts.model.modules import lens_to_mask
from flowtts.model.step import prepare_call

# Empirically Pruned Step Sampling grids (in 1/32 units) for small step counts.
EPSS_GRIDS = {
    5: [0, 2, 4, 8, 16, 32],
    6: [0, 2, 4, 6, 8, 16, 32],
    7: [0, 2, 4, 6, 8, 16, 24, 32],
    10: [0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32],
    12: [0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32],
    16: [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32],
}
ODE_METHODS = ("euler", "midpoint")  # torchdiffeq's fixed-grid rules, as upstream's ``odeint_kwargs``


@dataclass
class FlowLoss:
    loss: torch.Tensor  # scalar MSE over the infill span
    pred: torch.Tensor  # [b, n, mel] predicted flow
    span_mask: torch.Tensor  # [b, n] frames the loss was taken over
    cond: torch.Tensor  # [b, n, mel] the audio condition (span zeroed)
    duration_loss: torch.Tensor | None = None  # the duration predictor's loss, when it was given examples


@dataclass
class SampleResult:
    mel: torch.Tensor  # [b, n, mel]; prompt frames copied from cond, padding beyond duration_i zero
    duration: torch.Tensor  # [b] total frames per item (prompt + generated)


def time_grid(steps: int, use_epss: bool, sway_sampling_coef: float | None, device, dtype) -> torch.Tensor:
    """The ODE time points ``[steps + 1]``: EPSS or uniform, then the sway warp."""
    if use_epss and steps in EPSS_GRIDS:
        t = torch.tensor(EPSS_GRIDS[steps], device=device, dtype=dtype) / 32
    else:
        t = torch.linspace(0, 1, steps + 1, device=device, dtype=dtype)
    if sway_sampling_coef is not None:
        t = t + sway_sampling_coef * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


def span_mask(lens: torch.Tensor, frac_lengths: torch.Tensor, length: int) -> torch.Tensor:
    """A random contiguous span of ``frac * len`` frames per item: ``[b, length]``."""
    span = (frac_lengths * lens).long()
    start = ((lens - span) * torch.rand_like(frac_lengths)).long().clamp(min=0)
    seq = torch.arange(length, device=lens.device)[None, :]
    return (seq >= start[:, None]) & (seq < (start + span)[:, None])


class CFM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        audio_drop_prob: float = 0.3,
        cond_drop_prob: float = 0.2,
        frac_lengths_mask: tuple[float, float] = (0.7, 1.0),
    ):
        super().__init__()
        self.config = config
        self.transformer: Backbone = BACKBONES[config.backbone](config)
        self.duration_predictor = (
            DurationPredictor(config.duration_predictor, config.text_num_embeds)
            if config.duration_predictor is not None
            else None
        )
        self.num_channels = config.mel_dim
        self.audio_drop_prob = audio_drop_prob
        self.cond_drop_prob = cond_drop_prob
        self.frac_lengths_mask = frac_lengths_mask

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        mel: torch.Tensor,
        text: torch.Tensor,
        lens: torch.Tensor | None = None,
        duration: DurationBatch | None = None,
    ) -> FlowLoss:
        """Training loss. mel: [b, n, mel] (zero-padded), text: [b, nt] ids padded with -1, lens: [b].

        With ``duration`` examples (and a duration predictor) the predictor's loss is computed in the same
        call, so one DDP forward covers every parameter when both are trained together."""
        b, n, _ = mel.shape
        if lens is None:
            lens = torch.full((b,), n, device=mel.device, dtype=torch.long)
        mask = lens_to_mask(lens, n)  # [b, n]
        frac = torch.zeros(b, device=mel.device).uniform_(*self.frac_lengths_mask)
        infill = span_mask(lens, frac, n) & mask  # [b, n]
        x1 = mel
        x0 = torch.randn_like(x1)
        t = torch.rand(b, dtype=mel.dtype, device=mel.device)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        flow = x1 - x0
        cond = torch.where(infill[..., None], torch.zeros_like(x1), x1)
        drop_audio_cond = random.random() < self.audio_drop_prob  # one draw per batch, as upstream
        drop_text = random.random() < self.cond_drop_prob
        drop_audio_cond = drop_audio_cond or drop_text
        pred = self.transformer(
            x=xt, cond=cond, text=text, time=t, mask=mask, drop_audio_cond=drop_audio_cond, drop_text=drop_text
        )
        loss = F.mse_loss(pred.float(), flow.float(), reduction="none")[infill].mean()
        if duration is None:
            return FlowLoss(loss=loss, pred=pred, span_mask=infill, cond=cond)
        if self.duration_predictor is None:
            raise ValueError("duration examples were given but the model has no duration predictor")
        return FlowLoss(
            loss=loss, pred=pred, span_mask=infill, cond=cond, duration_loss=self.duration_predictor.loss(duration)
        )

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        text: torch.Tensor,
        duration: int | torch.Tensor,
        lens: torch.Tensor | None = None,
        steps: int = 32,
        cfg_strength: float = 2.0,
        sway_sampling_coef: float | None = -1.0,
        seed: int | torch.Tensor | list[int] | None = None,
        use_epss: bool = True,
        max_duration: int = 65536,
        isolate_items: bool = False,
        ode_method: str = "euler",
        edit_mask: torch.Tensor | None = None,
        backend=None,
    ) -> SampleResult:
        """ODE from noise to mel over the time grid, with classifier-free guidance packed into one forward.

        cond: [b, n_cond, mel] reference mel (or [b, samples] waveform is not accepted: pass the mel);
        text: [b, nt] ids padded with -1; duration: total frames (int or [b]); lens: prompt frames [b];
        seed: one seed for all items or one per item; item i's noise is
        ``torch.manual_seed(seed_i); torch.randn(duration_i, mel)`` whatever the batch.
        isolate_items: give every item exactly the result it gets when sampled alone (what serving and
        synthesis use: a request's audio must not depend on its batch); the default reproduces upstream's
        batched sampling, where padding slightly changes the shorter items.
        ode_method: ``euler`` (``x += dt * v(t, x)``) or ``midpoint`` (``x += dt * v(t + dt/2, x + dt/2 * v(t, x))``,
        two model calls per step), each step exactly as torchdiffeq's fixed-grid solvers take it.
        edit_mask: [b, n_cond] True where ``cond`` is kept (speech editing, upstream's semantics): frames
        within ``lens`` but outside the mask are regenerated, like the frames after the prompt.
        backend: a ``flowtts.inference`` backend that evaluates the guided step (compiled, ONNX Runtime);
        ``None`` runs the model's own forward (eager).
        """
        if ode_method not in ODE_METHODS:
            raise ValueError(f"ode_method={ode_method!r} is not one of {ODE_METHODS}")
        self.eval()
        device = self.device
        cond = cond.to(device=device, dtype=next(self.parameters()).dtype)
        text = text.to(device)
        b, cond_len, _ = cond.shape
        lens = torch.full((b,), cond_len, device=device, dtype=torch.long) if lens is None else lens.to(device)
        if isinstance(duration, int):
            duration = torch.full((b,), duration, device=device, dtype=torch.long)
        duration = duration.to(device=device, dtype=torch.long)
        duration = torch.maximum(torch.maximum((text != -1).sum(dim=-1), lens) + 1, duration).clamp(max=max_duration)
        n = int(duration.amax())

        cond = F.pad(cond, (0, 0, 0, max(n - cond_len, 0)))[:, :n]  # [b, n, mel]
        cond_mask = lens_to_mask(lens, n)  # [b, n]
        if edit_mask is not None:
            cond_mask = cond_mask & F.pad(edit_mask.to(device), (0, max(n - edit_mask.shape[1], 0)))[:, :n]
        cond_mask = cond_mask.unsqueeze(-1)  # [b, n, 1]
        step_cond = torch.where(cond_mask, cond, torch.zeros_like(cond))
        mask = lens_to_mask(duration, n) if b > 1 else None
        cache = TextCache()
        call = prepare_call(self.transformer, step_cond, text, mask, isolate_items) if backend is not None else None

        def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            if call is not None:  # the backend's graph always packs both branches; strength 0 gives pred
                return backend.velocity(call, x, t, cfg_strength)
            if cfg_strength < 1e-5:
                return self.transformer(
                    x=x, cond=step_cond, text=text, time=t, mask=mask, cache=cache, isolate_items=isolate_items
                )
            pred, null = self.transformer(
                x=x,
                cond=step_cond,
                text=text,
                time=t,
                mask=mask,
                cfg_infer=True,
                cache=cache,
                isolate_items=isolate_items,
            ).chunk(2, dim=0)
            return pred + (pred - null) * cfg_strength

        x = self.initial_noise(duration, seed, step_cond.dtype)  # [b, n, mel]
        grid = time_grid(steps, use_epss, sway_sampling_coef, device, step_cond.dtype)
        for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
            if ode_method == "euler":
                x = x + (t1 - t0) * velocity(t0, x)
            else:
                half = (t1 - t0) / 2
                x = x + (t1 - t0) * velocity(t0 + half, x + half * velocity(t0, x))
        out = torch.where(cond_mask, cond, x)
        if mask is not None:
            out = out.masked_fill(~mask.unsqueeze(-1), 0.0)
        return SampleResult(mel=out, duration=duration)

    def initial_noise(self, duration: torch.Tensor, seed, dtype: torch.dtype) -> torch.Tensor:
        """Per-item noise, re-seeded per item so an item's noise does not depend on the batch."""
        seeds = _per_item_seeds(seed, len(duration))
        rows = []
        for dur, item_seed in zip(duration.tolist(), seeds, strict=True):
            generator = None
            if item_seed is not None:
                generator = torch.Generator(device="cpu").manual_seed(int(item_seed))
            rows.append(torch.randn(dur, self.num_channels, generator=generator, dtype=torch.float32))
        noise = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return noise.to(device=self.device, dtype=dtype)


def _per_item_seeds(seed, batch: int) -> list[int | None]:
    if seed is None:
        return [None] * batch
    if isinstance(seed, int):
        return [seed] * batch
    seeds = [int(s) for s in (seed.tolist() if isinstance(seed, torch.Tensor) else seed)]
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    return seeds


def build_model(config: ModelConfig, **cfm_kwargs) -> CFM:
    """The one builder: config -> CFM (randomly initialised as upstream)."""
    return CFM(config, **cfm_kwargs)
