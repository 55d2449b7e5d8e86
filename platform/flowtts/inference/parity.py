"""Parity of an exported guided step with eager: the same call through the exported file and ``GuidedStep``.

Two calls: ``example_call``'s padded batch (the last item shorter, its text padded; items isolated) and its
first item alone, unpadded (no mask, as a single item samples). The ONNX file runs through the onnxruntime
backend (``make_backend``), the program through ``torch.export.load(...).module()``; each is compared with
``GuidedStep`` on the model's own weights, at ``t = 0.5`` and guidance 2.0.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowtts.inference.backends import make_backend
from flowtts.inference.export import example_call
from flowtts.model.cfm import CFM
from flowtts.model.step import GuidedStep, StepCall, prepare_call

TOLERANCE = 1e-4  # max |diff| of one step's velocity
CFG_STRENGTH = 2.0


def parity_calls(model: CFM) -> dict[str, tuple[StepCall, torch.Tensor]]:
    """The calls compared: ``padded_batch`` and ``single_item`` (each with its ``x``)."""
    call, x = example_call(model)
    single = prepare_call(model.transformer, call.cond[:1], call.text[:1], None, isolate_items=True)
    return {"padded_batch": (call, x), "single_item": (single, x[:1])}


def check_parity(model: CFM, onnx_file: Path | None = None, program_file: Path | None = None) -> dict:
    """Max |diff| against eager per exported file and call: ``{"formats": {"onnx": {"padded_batch": d,
    "single_item": d, "max_diff": d}, "torch-export": ...}, "max_diff": d, "tolerance": TOLERANCE, "passed": bool}``."""
    model.eval()
    calls = parity_calls(model)
    runners = {}
    if onnx_file is not None:
        backend = make_backend("onnxruntime", model, onnx_file=onnx_file)
        runners["onnx"] = lambda call, x, t: backend.velocity(call, x, t, CFG_STRENGTH)
    if program_file is not None:
        program = torch.export.load(str(program_file)).module()
        runners["torch-export"] = lambda call, x, t: program(*call.inputs(x, t, CFG_STRENGTH))
    t = torch.tensor(0.5, device=model.device, dtype=next(model.parameters()).dtype)
    formats = {}
    with torch.no_grad():
        eager = {
            name: GuidedStep(model.transformer, call.isolate).eval()(*call.inputs(x, t, CFG_STRENGTH))
            for name, (call, x) in calls.items()
        }
        for fmt, run in runners.items():
            diffs = {name: float((run(call, x, t) - eager[name]).abs().max()) for name, (call, x) in calls.items()}
            formats[fmt] = {**diffs, "max_diff": max(diffs.values())}
    worst = max((result["max_diff"] for result in formats.values()), default=0.0)
    return {"formats": formats, "max_diff": worst, "tolerance": TOLERANCE, "passed": worst <= TOLERANCE}
