"""Parity with checkpoints and outputs written by the official F5-TTS (../shared fixtures)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flowtts.audio import log_mel_spectrogram
from flowtts.checkpoint import export_f5_checkpoint, load_f5_checkpoint, read_official_state
from flowtts.text import Vocab, pad_token_ids

TOL = 1e-4


@pytest.fixture(scope="module", params=["model_last.pt", "model.safetensors"])
def loaded(request, dit_fixture):
    config = json.loads((dit_fixture / "config.json").read_text())
    model = load_f5_checkpoint(dit_fixture / request.param, config)
    return model, load_file(str(dit_fixture / "cases.safetensors"))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_forward_cases(loaded):
    model, c = loaded
    kwargs = dict(x=c["fwd_x"], cond=c["fwd_cond"], text=c["fwd_text"], time=c["fwd_time"], mask=c["fwd_mask"])
    with torch.no_grad():
        assert max_diff(model.transformer(**kwargs), c["fwd_out"]) <= TOL
        assert max_diff(model.transformer(**kwargs, drop_audio_cond=True), c["fwd_out_drop_audio"]) <= TOL
        out = model.transformer(**kwargs, drop_audio_cond=True, drop_text=True)
        assert max_diff(out, c["fwd_out_drop_all"]) <= TOL
        single = model.transformer(
            x=c["fwd_x"][:1], cond=c["fwd_cond"][:1], text=c["fwd_text"][:1], time=c["fwd_time"][:1]
        )
        assert max_diff(single, c["fwd1_out"]) <= TOL


@pytest.mark.parametrize("steps", [8, 7])
def test_sample_single(loaded, steps):
    model, c = loaded
    out = model.sample(
        cond=c["smp_cond"],
        text=c["fwd_text"][1:2],
        duration=90,
        steps=steps,
        cfg_strength=2.0,
        sway_sampling_coef=-1.0,
        seed=1234,
    )
    assert max_diff(out.mel, c[f"smp_out_steps{steps}"]) <= TOL


def test_sample_batch_with_prompt_lengths(loaded):
    model, c = loaded
    out = model.sample(
        cond=c["smpb_cond"],
        text=c["fwd_text"],
        duration=torch.tensor([90, 70]),
        lens=torch.tensor([40, 28]),
        steps=8,
        cfg_strength=2.0,
        sway_sampling_coef=-1.0,
        seed=99,
    )
    assert max_diff(out.mel[0], c["smpb_out"][0]) <= TOL
    assert max_diff(out.mel[1, :70], c["smpb_out"][1, :70]) <= TOL


def test_log_mel(dit_fixture):
    c = load_file(str(dit_fixture / "cases.safetensors"))
    assert max_diff(log_mel_spectrogram(c["mel_wav"]), c["mel_out"]) <= TOL


def test_fixture_text_ids_match_our_tokenizer(dit_fixture):
    cases = json.loads((dit_fixture / "cases.json").read_text())
    vocab = Vocab.load(dit_fixture / "vocab.txt")
    ids = pad_token_ids([vocab.encode(t) for t in cases["texts"]])
    assert ids.tolist() == cases["text_ids"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_reimport_identical(loaded, dit_fixture, tmp_path, suffix):
    model, _ = loaded
    path = tmp_path / f"exported{suffix}"
    export_f5_checkpoint(model, path)
    config = json.loads((dit_fixture / "config.json").read_text())
    again = load_f5_checkpoint(path, config)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    if suffix == ".safetensors":
        assert set(load_file(str(path))) == set(load_file(str(dit_fixture / "model.safetensors")))
    else:
        exported = torch.load(path, weights_only=True)["ema_model_state_dict"]
        official = torch.load(dit_fixture / "model_last.pt", weights_only=True)["ema_model_state_dict"]
        assert set(exported) == set(official)


def test_online_weights_differ_from_ema(dit_fixture):
    ema = read_official_state(dit_fixture / "model_last.pt", use_ema=True)
    online = read_official_state(dit_fixture / "model_last.pt", use_ema=False)
    assert set(ema) == set(online)
    assert any(not torch.equal(ema[k], online[k]) for k in ema)
