"""Export of the guided ODE step (``flowtts.model.step.GuidedStep``) to ONNX and to a ``torch.export`` program.

The exported graph is one step: the packed conditional + unconditional backbone forward and the guidance mix,
with dynamic batch, frames and (MMDiT) text tokens. The text embeddings are inputs, computed once per sampling
call in PyTorch (``prepare_call``) as the eager path computes them. Items are isolated (padded keys masked),
the mode synthesis, serving and evaluation sample in; the mode is recorded in the ONNX metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

from flowtts.model.cfm import CFM
from flowtts.model.step import INPUT_NAMES, GuidedStep, StepCall, prepare_call

OPSET = 18
ISOLATE_KEY = "flowtts.isolate_items"
CONFIG_KEY = "flowtts.model_config"
ONNX_FILE = "step.onnx"
PROGRAM_FILE = "step.pt2"
EXTERNAL_DATA_BYTES = 1 << 30  # above this the weights go to a side file (protobuf's limit is 2 GiB)
MIN_OPSET = 17  # LayerNormalization


class ExportError(ValueError):
    """An export that cannot be made as asked (an opset too old) or that does not match eager; says why."""


def check_opset(opset: int) -> None:
    """Refuse an opset the step's graph cannot be written in, before anything is loaded or traced."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")


def example_call(model: CFM, batch: int = 2, frames: int = 48, tokens: int = 12) -> tuple[StepCall, torch.Tensor]:
    """A padded batch (the last item shorter, its text padded) and a noisy ``x``: the tracing inputs."""
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cond = torch.randn(batch, frames, model.num_channels, generator=g).to(device, dtype)
    text = torch.randint(0, model.config.text_num_embeds, (batch, tokens), generator=g).to(device)
    lens = torch.full((batch,), frames, device=device)
    lens[-1] = frames * 2 // 3
    text[-1, tokens * 2 // 3 :] = -1
    mask = torch.arange(frames, device=device)[None] < lens[:, None]
    cond = cond.masked_fill(~mask[..., None], 0.0)
    x = torch.randn(batch, frames, model.num_channels, generator=g).to(device, dtype)
    return prepare_call(model.transformer, cond, text, mask, isolate_items=True), x


def _dynamic_shapes(model: CFM) -> dict:
    b = torch.export.Dim("batch", min=1, max=1024)
    n = torch.export.Dim("frames", min=2, max=65536)
    nt = torch.export.Dim("tokens", min=1, max=65536)
    text_len = nt if model.config.backbone == "MMDiT" else n
    return {
        "x": {0: b, 1: n},
        "cond": {0: b, 1: n},
        "text": {0: b, 1: nt},
        "text_emb": {0: b, 1: text_len},
        "null_text_emb": {0: b, 1: text_len},
        "time": None,
        "mask": {0: b, 1: n},
        "cfg_strength": None,
    }


def _traced(model: CFM) -> tuple[GuidedStep, tuple[torch.Tensor, ...]]:
    model.eval()
    call, x = example_call(model)
    t = torch.tensor(0.5, device=x.device, dtype=x.dtype)
    return GuidedStep(model.transformer, isolate=True).eval(), call.inputs(x, t, 2.0)


def export_program(model: CFM, path: str | Path) -> Path:
    """A ``torch.export`` program of the step, saved with ``torch.export.save`` (load with ``torch.export.load``)."""
    step, args = _traced(model)
    with torch.no_grad():
        program = torch.export.export(step, args, dynamic_shapes=_dynamic_shapes(model), strict=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def export_onnx(model: CFM, path: str | Path, opset: int = OPSET) -> Path:
    """The step as ONNX (``opset`` >= 17), its weights inside the file up to 1 GiB, else in ``<file>.data``."""
    check_opset(opset)
    step, args = _traced(model)
    # the exporter prints its progress and warns about optional torchvision ops: keep the caller's log clean
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            step,
            args,
            input_names=list(INPUT_NAMES),
            output_names=["velocity"],
            dynamic_shapes=_dynamic_shapes(model),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[ISOLATE_KEY] = "true"
    program.model.metadata_props[CONFIG_KEY] = json.dumps(model.config.model_dump(mode="json"), sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.transformer.parameters())
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    return path
