"""Sampling backends and the exported step against eager, on the project's reference models of every backbone.

Per step (the exported graph against the eager ``GuidedStep``): <= 1e-4. Whole sampling calls with one seed
(compiled and ONNX Runtime against eager): <= 1e-3, max |diff| of the mel over valid frames.

The reference fixtures' random N(0, 0.3^2) weights make steps of |20| and amplify float32 rounding, so there a
step is held to 1e-4 of its scale, and, as in test_reference.py, a larger difference passes only within 10x how
far eager itself moves when every weight is nudged by one float32 rounding unit, never beyond 0.1
(``tests.helpers.parity``).
Models at upstream's initial weight scale are held to 1e-4 per step outright
(``test_step_at_upstream_weight_scale_matches_eager_within_1e_4``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from flowtts.checkpoint import load_f5_checkpoint
from flowtts.inference import BACKENDS, BackendError, make_backend
from flowtts.inference.backends import CompiledBackend
from flowtts.inference.export import example_call, export_onnx, export_program
from flowtts.model import build_model
from flowtts.model.step import GuidedStep, prepare_call
from flowtts.synthesis import SamplingSettings, SynthesisOptions, Synthesizer
from flowtts.synthesis.cli import add_model_options
from serve.settings import ServeSettings
from tests.helpers.models import small_model_config
from tests.helpers.parity import assert_matches_eager

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
NAMES = sorted(p.name for p in REFERENCE.glob("*") if (p / "cases.safetensors").is_file())
COMPILED = ["dit-v1", "mmdit"]  # per-frame and per-token text embeddings; compiling costs ~1 min each on 2 cores
STEP_TOL, SAMPLE_TOL = 1e-4, 1e-3
pytestmark = pytest.mark.skipif(not NAMES, reason=f"no reference fixtures in {REFERENCE}")


def load_reference(name: str):
    folder = REFERENCE / name
    model = load_f5_checkpoint(folder / "model.safetensors", json.loads((folder / "config.json").read_text())).eval()
    meta = json.loads((folder / "cases.json").read_text())
    return model, load_file(str(folder / "cases.safetensors")), meta


def eager_step(model, call, x, time) -> torch.Tensor:
    return GuidedStep(model.transformer, isolate=True)(*call.inputs(x, time, 2.0))


def batch_sampling(model, c, meta, backend=None) -> torch.Tensor:
    """The fixtures' batch case: prompt lengths and durations differ; items isolated as synthesis samples them."""
    params = meta["sample_batch"]
    return model.sample(
        cond=c["smpb_cond"],
        text=c["fwd_text"],
        duration=torch.tensor(params["duration"]),
        lens=torch.tensor(params["lens"]),
        steps=params["steps"],
        cfg_strength=params["cfg_strength"],
        sway_sampling_coef=params["sway_sampling_coef"],
        seed=params["seed"],
        isolate_items=True,
        backend=backend,
    ).mel


def single_sampling(model, c, meta, backend=None) -> torch.Tensor:
    """One item, its text without padding (as synthesis tokenises a lone item)."""
    params = {k: v for k, v in meta["sample_single"].items() if k != "text"}
    text = c["fwd_text"][:1]
    return model.sample(cond=c["smp_cond"], text=text[:, : int((text != -1).sum())], backend=backend, **params).mel


@pytest.fixture(scope="module", params=NAMES)
def exported(request, tmp_path_factory):
    model, c, meta = load_reference(request.param)
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "step.onnx")
    return request.param, model, c, meta, make_backend("onnxruntime", model, onnx_file=path)


def test_onnx_step_matches_eager_per_step(exported):
    name, model, c, meta, backend = exported
    call = prepare_call(model.transformer, c["fwd_cond"], c["fwd_text"], c["fwd_mask"], isolate_items=True)
    time = c["fwd_time"][0]
    with torch.no_grad():
        onnx = backend.velocity(call, c["fwd_x"], time, 2.0)
        scale = max(1.0, float(eager_step(model, call, c["fwd_x"], time).abs().max()))  # ~20 here
        run = lambda: eager_step(model, call, c["fwd_x"], time)  # noqa: E731
        assert_matches_eager(model, run, onnx, meta["lens"], STEP_TOL * scale)


def test_onnxruntime_sampling_matches_eager(exported):
    _, model, c, meta, backend = exported
    lens = meta["sample_batch"]["duration"]
    assert_matches_eager(
        model, lambda: batch_sampling(model, c, meta), batch_sampling(model, c, meta, backend), lens, SAMPLE_TOL
    )
    single = single_sampling(model, c, meta, backend)
    assert_matches_eager(model, lambda: single_sampling(model, c, meta), single, [single.shape[1]], SAMPLE_TOL)


def test_onnxruntime_refuses_a_padded_batch_in_upstream_batch_semantics(exported):
    _, model, c, meta, backend = exported
    params = meta["sample_batch"]
    with pytest.raises(BackendError, match="isolate_items=True"):
        model.sample(
            cond=c["smpb_cond"],
            text=c["fwd_text"],
            duration=torch.tensor(params["duration"]),
            lens=torch.tensor(params["lens"]),
            steps=2,
            backend=backend,
        )


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_sampling_matches_eager_with_and_without_shape_buckets(name):
    model, c, meta = load_reference(name)
    lens = meta["sample_batch"]["duration"]
    backend = CompiledBackend(model)
    assert backend.warm_up() > 0
    compiled, single = batch_sampling(model, c, meta, backend), single_sampling(model, c, meta, backend)
    backend.buckets = True  # what CUDA runs: batch padded to a power of two, DiT's frames to FRAME_BUCKET
    bucketed = batch_sampling(model, c, meta, backend)
    for out in (compiled, bucketed):
        assert_matches_eager(model, lambda: batch_sampling(model, c, meta), out, lens, SAMPLE_TOL)
    assert_matches_eager(model, lambda: single_sampling(model, c, meta), single, [single.shape[1]], SAMPLE_TOL)


@pytest.mark.parametrize("name", COMPILED)
def test_torch_export_program_matches_eager_per_step(name, tmp_path):
    model, c, meta = load_reference(name)
    program = torch.export.load(str(export_program(model, tmp_path / "step.pt2"))).module()
    for rows in (2, 1):  # a padded batch, then one item: batch and lengths are dynamic in the program
        call = prepare_call(
            model.transformer, c["fwd_cond"][:rows], c["fwd_text"][:rows], c["fwd_mask"][:rows], isolate_items=True
        )
        inputs = call.inputs(c["fwd_x"][:rows], c["fwd_time"][0], 2.0)
        with torch.no_grad():
            out = program(*inputs)
            assert_matches_eager(
                model,
                lambda inputs=inputs: GuidedStep(model.transformer, True)(*inputs),
                out,
                meta["lens"][:rows],
                STEP_TOL,
            )


@pytest.mark.parametrize("backbone", ["DiT", "UNetT", "MMDiT"])
def test_step_at_upstream_weight_scale_matches_eager_within_1e_4(backbone, tmp_path):
    torch.manual_seed(0)
    model = build_model(small_model_config(40, backbone)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)  # the zero-initialised output layers too: a step must not be trivially zero
    backend = make_backend("onnxruntime", model, onnx_file=export_onnx(model, tmp_path / "step.onnx"))
    call, x = example_call(model, batch=3, frames=40, tokens=10)
    with torch.no_grad():
        eager = GuidedStep(model.transformer, isolate=True)(*call.inputs(x, torch.tensor(0.3), 2.0))
        onnx = backend.velocity(call, x, torch.tensor(0.3), 2.0)
    lens = call.mask.sum(dim=1).tolist()
    assert float(eager.abs().max()) > 0.01
    assert max(float((onnx[i, :n] - eager[i, :n]).abs().max()) for i, n in enumerate(lens)) <= STEP_TOL


def test_make_backend_names_the_choices_and_the_missing_file(tmp_path):
    model, _, _ = load_reference(NAMES[0])
    assert make_backend("eager", model) is None
    with pytest.raises(BackendError, match=", ".join(BACKENDS)):
        make_backend("tensorrt", model)
    with pytest.raises(BackendError, match="does not exist"):
        make_backend("onnxruntime", model, onnx_file=tmp_path / "missing.onnx")
    with pytest.raises(BackendError, match="onnxruntime backend only"):
        make_backend("compiled", model, onnx_file=tmp_path / "step.onnx")


@pytest.mark.fixtures
def test_synthesizer_with_the_onnxruntime_backend_matches_eager(dit_fixture):
    load = {"model_config": dit_fixture / "config.json"}
    eager = Synthesizer.from_pretrained(dit_fixture / "model.safetensors", **load)
    fast = Synthesizer.from_pretrained(dit_fixture / "model.safetensors", backend="onnxruntime", **load)
    assert fast.backend is not None and fast.backend.name == "onnxruntime" and eager.backend is None
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    options = SynthesisOptions(sampling=SamplingSettings(nfe=4), seed=3)
    mels = []
    for synth in (eager, fast):
        reference = synth.prepare_reference(audio, "ab", 24000)
        plan = synth.plan("ba ab", reference, options)
        mels.append(synth.generate(plan.items, options.sampling))
    for a, b in zip(*mels, strict=True):
        assert a.shape == b.shape and float((a - b).abs().max()) <= SAMPLE_TOL


def test_the_backend_setting_is_validated_in_the_cli_and_in_serving():
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    args = parser.parse_args(["--model", "m", "--backend", "onnxruntime", "--onnx-file", "step.onnx"])
    assert (args.backend, args.onnx_file) == ("onnxruntime", "step.onnx")
    assert parser.parse_args(["--model", "m"]).backend == "eager"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--backend", "tensorrt"])
    assert ServeSettings.from_args({"backend": "compiled"}, environ={}).backend == "compiled"
    with pytest.raises(ValidationError, match="backend"):
        ServeSettings.from_args({"backend": "tensorrt"}, environ={})
