"""One guided ODE step as a module of tensors only: what ``torch.compile``, ONNX and ``torch.export`` take.

``CFM.sample`` evaluates, at every step, the backbone twice (conditional and unconditional, packed into one
``2b`` forward) and mixes the two with the guidance strength. Everything that does not depend on the step's
``x`` and ``t`` is computed once per call by ``prepare_call`` (the text embeddings of both branches, the
masked audio condition, the frame mask), so the traced graph holds exactly the per-step work and has no
Python state: ``GuidedStep(x, cond, text, text_emb, null_text_emb, time, mask, cfg_strength)``.

The mask is always a tensor (all True for one item). For DiT and UNetT an all-True mask computes what no
mask does. MMDiT differs in one corner: upstream samples a single item without a mask, so that item's
attention sees its own ``-1`` text padding as keys; here padded text is masked as keys. A single item's text
carries no padding in every product path (synthesis tokenises each item alone), so that corner is only
reachable by calling ``CFM.sample`` by hand with padded text, which the eager backend keeps for upstream parity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flowtts.model.backbones import Backbone, TextCache


@dataclass
class StepCall:
    """The per-call constants of one sampling call, as the traced step takes them."""

    cond: torch.Tensor  # [b, n, mel] audio condition (zero where regenerated)
    text: torch.Tensor  # [b, nt] ids padded with -1 (MMDiT reads its padding mask from it)
    text_emb: torch.Tensor  # [b, n or nt, d_text] the conditional branch's text embedding
    null_text_emb: torch.Tensor  # same shape: the unconditional branch's (dropped text)
    mask: torch.Tensor  # [b, n] valid frames
    isolate: bool  # items computed as if each were alone (padded keys masked)

    def inputs(self, x: torch.Tensor, time: torch.Tensor, cfg_strength: float) -> tuple[torch.Tensor, ...]:
        """The step's positional inputs, in ``GuidedStep.forward``'s order (``INPUT_NAMES``)."""
        strength = torch.tensor(cfg_strength, dtype=x.dtype, device=x.device)
        return (x, self.cond, self.text, self.text_emb, self.null_text_emb, time.reshape(1), self.mask, strength)


INPUT_NAMES = ("x", "cond", "text", "text_emb", "null_text_emb", "time", "mask", "cfg_strength")


def prepare_call(
    transformer: Backbone, cond: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None, isolate_items: bool
) -> StepCall:
    """Text embeddings of both branches, computed once, exactly as the eager forward computes and caches them."""
    b, n, _ = cond.shape
    isolate = isolate_items and mask is not None
    cache = TextCache()
    text_emb = transformer.text_embedding(text, n, False, mask, cache, isolate)
    null_text_emb = transformer.text_embedding(text, n, True, mask, cache, isolate)
    full = mask if mask is not None else torch.ones(b, n, dtype=torch.bool, device=cond.device)
    return StepCall(cond=cond, text=text, text_emb=text_emb, null_text_emb=null_text_emb, mask=full, isolate=isolate)


class GuidedStep(nn.Module):
    """``v = pred + (pred - null) * cfg_strength`` from one packed forward of the backbone (shares its weights)."""

    def __init__(self, transformer: Backbone, isolate: bool):
        super().__init__()
        self.transformer = transformer
        self.isolate = isolate  # static: the key-masking rule differs, so each mode is its own graph

    def forward(self, x, cond, text, text_emb, null_text_emb, time, mask, cfg_strength) -> torch.Tensor:
        cache = TextCache(embeds={False: text_emb, True: null_text_emb})
        packed = self.transformer(
            x=x,
            cond=cond,
            text=text,
            time=time.expand(x.shape[0]),
            mask=mask,
            cfg_infer=True,
            cache=cache,
            isolate_items=self.isolate,
        )
        b = x.shape[0]
        pred, null = packed[:b], packed[b:]  # not chunk(): its guard on the batch size defeats a dynamic batch
        return pred + (pred - null) * cfg_strength
