"""Parity with upstream F5-TTS on every backbone and flag set (fixtures from tests/fixtures/make_reference.py).

Each folder under tests/fixtures/reference holds a tiny random-weight model in both official checkpoint
formats and upstream's outputs; only valid frames are compared (padding is padding).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowtts.checkpoint import load_f5_checkpoint

TOL = 1e-4
REFERENCE = Path(__file__).parent / "fixtures" / "reference"
NAMES = sorted(p.name for p in REFERENCE.glob("*") if (p / "cases.safetensors").is_file())
pytestmark = pytest.mark.skipif(not NAMES, reason=f"no reference fixtures in {REFERENCE}")


@pytest.fixture(scope="module", params=[(n, f) for n in NAMES for f in ("model_last.pt", "model.safetensors")])
def ref(request):
    name, file = request.param
    folder = REFERENCE / name
    model = load_f5_checkpoint(folder / file, json.loads((folder / "config.json").read_text()))
    meta = json.loads((folder / "cases.json").read_text())
    return model, load_file(str(folder / "cases.safetensors")), meta


def max_diff_valid(ours: torch.Tensor, upstream: torch.Tensor, lens) -> float:
    """Largest |difference| over each item's first ``lens[i]`` frames."""
    assert ours.shape == upstream.shape, (ours.shape, upstream.shape)
    return max(float((ours[i, :n] - upstream[i, :n]).abs().max()) for i, n in enumerate(lens))


@pytest.mark.parametrize(
    "case, drops",
    [
        ("fwd_out", {}),
        ("fwd_out_drop_audio", {"drop_audio_cond": True}),
        ("fwd_out_drop_all", {"drop_audio_cond": True, "drop_text": True}),
    ],
)
def test_forward_padded_batch(ref, case, drops):
    model, c, meta = ref
    with torch.no_grad():
        out = model.transformer(
            x=c["fwd_x"], cond=c["fwd_cond"], text=c["fwd_text"], time=c["fwd_time"], mask=c["fwd_mask"], **drops
        )
    assert max_diff_valid(out, c[case], meta["lens"]) <= TOL


def test_forward_single_item(ref):
    model, c, _ = ref
    with torch.no_grad():
        out = model.transformer(
            x=c["fwd_x"][:1], cond=c["fwd_cond"][:1], text=c["fwd_text"][:1], time=c["fwd_time"][:1]
        )
    assert max_diff_valid(out, c["fwd1_out"], [out.shape[1]]) <= TOL


def test_forward_single_item_with_padded_text(ref):
    """A batch row taken alone: its audio is unpadded but its text row still ends in -1 padding."""
    model, c, meta = ref
    n = meta["lens"][1]
    with torch.no_grad():
        out = model.transformer(
            x=c["fwd_x"][1:, :n], cond=c["fwd_cond"][1:, :n], text=c["fwd_text"][1:], time=c["fwd_time"][1:]
        )
    assert max_diff_valid(out, c["fwd1_padded_text_out"], [n]) <= TOL


def test_sample_single_item(ref):
    model, c, meta = ref
    params = {k: v for k, v in meta["sample_single"].items() if k != "text"}
    out = model.sample(cond=c["smp_cond"], text=c["fwd_text"][1:], **params)
    assert max_diff_valid(out.mel, c["smp_out"], [params["duration"]]) <= TOL


def test_sample_batch_with_prompt_lengths_and_durations(ref):
    model, c, meta = ref
    params = dict(meta["sample_batch"])
    durations = params.pop("duration")
    out = model.sample(
        cond=c["smpb_cond"],
        text=c["fwd_text"],
        duration=torch.tensor(durations),
        lens=torch.tensor(params.pop("lens")),
        **params,
    )
    assert out.duration.tolist() == durations
    assert max_diff_valid(out.mel, c["smpb_out"], durations) <= TOL


def test_training_loss_under_a_seed(ref):
    """Eval mode (no dropout): our CFM.forward draws the same torch and Python random streams as upstream."""
    model, c, meta = ref
    assert {d["drop_text"] for d in meta["loss_drops"].values()} == {False, True}  # both CFG branches covered
    lens = torch.tensor(meta["lens"])
    for seed in meta["loss_seeds"]:
        torch.manual_seed(seed)
        random.seed(seed)
        with torch.no_grad():
            out = model(c["loss_mel"], c["fwd_text"], lens)
        assert abs(float(out.loss) - float(c[f"loss_{seed}"])) <= TOL, seed
        assert max_diff_valid(out.cond, c[f"loss_cond_{seed}"], meta["lens"]) == 0.0, seed
        assert max_diff_valid(out.pred, c[f"loss_pred_{seed}"], meta["lens"]) <= TOL, seed


def test_every_upstream_backbone_is_covered():
    if not NAMES:
        pytest.skip("no reference fixtures")
    configs = [json.loads((REFERENCE / n / "config.json").read_text()) for n in NAMES]
    assert {c["backbone"] for c in configs} == {"DiT", "UNetT", "MMDiT"}
