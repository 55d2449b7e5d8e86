"""Checkpoints: our format, official F5-TTS files written by us, strict-loading errors and vocab extension."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowtts.checkpoint import (
    OUR_ONLY_PREFIXES,
    CheckpointError,
    export_f5_checkpoint,
    extend_vocab,
    load_bundle,
    load_checkpoint,
    load_f5_checkpoint,
    read_official_state,
    save_checkpoint,
)
from flowtts.config import DurationPredictorConfig, MelConfig
from flowtts.model import CFM, build_model
from flowtts.model.modules import lens_to_mask
from flowtts.text import Vocab
from tests.helpers.models import assert_same_state, small_model_config

TOKENS = [" ", *"abcdefghijklmnopqrs"]  # 20 tokens, id 0 = space


small_config = functools.partial(small_model_config, len(TOKENS))


def random_model(backbone: str = "DiT", seed: int = 0, **overrides) -> CFM:
    """Every parameter seeded random (upstream zero-inits several), so outputs and weights are distinctive."""
    torch.manual_seed(seed)
    model = build_model(small_config(backbone, **overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def forward(model: CFM, text: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 24, 100, generator=generator)
    cond = torch.randn(2, 24, 100, generator=generator)
    with torch.no_grad():
        return model.transformer(
            x=x, cond=cond, text=text, time=torch.tensor([0.2, 0.8]), mask=lens_to_mask(torch.tensor([24, 17]))
        )


# ---------------------------------------------------------------- our format


@pytest.mark.parametrize("backbone", ["DiT", "UNetT", "MMDiT"])
def test_our_format_round_trip_is_identical(tmp_path, backbone):
    model = random_model(backbone, pe_attn_head=1, attn_mask_enabled=True)
    vocab = Vocab(TOKENS)
    mel = MelConfig(hop_length=256)
    folder = save_checkpoint(model, tmp_path / "ckpt", vocab, mel=mel, info={"step": 3, "note": "tiếng Việt"})
    assert sorted(p.name for p in folder.iterdir()) == ["flowtts.json", "model.safetensors", "vocab.txt"]
    sidecar = json.loads((folder / "flowtts.json").read_text(encoding="utf-8"))
    assert sidecar["format_version"] == 1 and sidecar["model"]["backbone"] == backbone

    bundle = load_bundle(folder)
    assert_same_state(bundle.model, model)
    assert bundle.model.config == model.config
    assert not bundle.model.training
    assert bundle.vocab == vocab
    assert bundle.mel == mel
    assert bundle.info == {"step": 3, "note": "tiếng Việt"}
    assert_same_state(load_checkpoint(folder), model)


def test_saving_over_an_existing_checkpoint_replaces_it_whole(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(random_model(seed=1), folder, Vocab(TOKENS))
    (folder / "stale.txt").write_text("from the old checkpoint")
    newer = random_model(seed=2)
    save_checkpoint(newer, folder, Vocab(TOKENS))
    assert_same_state(load_checkpoint(folder), newer)
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or trash folders left behind


def test_failed_save_leaves_the_existing_checkpoint_intact(tmp_path):
    folder = tmp_path / "ckpt"
    original = random_model(seed=1)
    save_checkpoint(original, folder, Vocab(TOKENS))
    with pytest.raises(TypeError):
        save_checkpoint(random_model(seed=2), folder, Vocab(TOKENS), info={"not json": object()})
    assert_same_state(load_checkpoint(folder), original)


def test_save_rejects_a_vocab_of_the_wrong_size(tmp_path):
    with pytest.raises(CheckpointError, match="vocab has 3 tokens but the model expects 20"):
        save_checkpoint(random_model(), tmp_path / "ckpt", Vocab([" ", "a", "b"]))


def test_loading_a_folder_that_is_not_a_checkpoint_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="not a flowtts checkpoint folder"):
        load_bundle(tmp_path)


# ---------------------------------------------------------------- official format


def exported_state(model: CFM, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = tmp_path / "model.safetensors"
    export_f5_checkpoint(model, path)
    return load_file(str(path))


def load_modified(state: dict[str, torch.Tensor], tmp_path: Path, config: dict | None = None) -> CFM:
    path = tmp_path / "modified.safetensors"
    save_file(state, str(path))
    return load_f5_checkpoint(path, config or small_config().model_dump())


@pytest.mark.parametrize("backbone", ["DiT", "UNetT", "MMDiT"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_official_export_reimports_identically(tmp_path, backbone, suffix):
    model = random_model(backbone)
    path = tmp_path / f"model{suffix}"
    export_f5_checkpoint(model, path, step=42)
    assert_same_state(load_f5_checkpoint(path, model.config.model_dump()), model)
    if suffix == ".safetensors":
        raw = load_file(str(path))
    else:
        checkpoint = torch.load(path, weights_only=True)
        assert list(checkpoint) == ["ema_model_state_dict"]
        raw = checkpoint["ema_model_state_dict"]
    assert set(raw) == {f"ema_model.{k}" for k in model.state_dict()} | {"initted", "step"}
    assert int(raw["step"]) == 42


def test_export_refuses_unknown_extensions(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.pt or \.safetensors"):
        export_f5_checkpoint(random_model(), tmp_path / "model.bin")
    assert not any(tmp_path.iterdir())


def test_export_leaves_out_our_only_keys(tmp_path):
    model = build_model(small_config(duration_predictor=DurationPredictorConfig(dim=32)))
    ours = [k for k in model.state_dict() if k.startswith(OUR_ONLY_PREFIXES)]
    if not ours:
        pytest.skip(f"CFM has no {OUR_ONLY_PREFIXES} parameters yet")
    exported = exported_state(model, tmp_path)
    assert not any(k.removeprefix("ema_model.").startswith(OUR_ONLY_PREFIXES) for k in exported)


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    state = exported_state(random_model(), tmp_path)
    del state["ema_model.transformer.proj_out.bias"]
    state["ema_model.transformer.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as error:
        load_modified(state, tmp_path)
    message = str(error.value)
    assert "1 missing keys: ['transformer.proj_out.bias']" in message
    assert "1 unexpected keys: ['transformer.extra_head.weight']" in message


def test_strict_loading_names_shape_mismatches(tmp_path):
    state = exported_state(random_model(), tmp_path)
    state["ema_model.transformer.proj_out.weight"] = torch.zeros(100, 32)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch for transformer\.proj_out\.weight: "
        r"checkpoint \(100, 32\) vs model \(100, 64\)",
    ):
        load_modified(state, tmp_path)


def test_vocab_size_mismatch_points_to_vocab_extension(tmp_path):
    state = exported_state(random_model(), tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_modified(state, tmp_path, small_model_config(25).model_dump())
    message = str(error.value)
    assert "vocab size mismatch: the checkpoint has 20 tokens" in message and "text_num_embeds=25" in message
    assert "extend_vocab" in message


def test_legacy_mel_keys_and_ema_bookkeeping_are_dropped(tmp_path):
    model = random_model()
    state = exported_state(model, tmp_path)
    state["ema_model.mel_spec.mel_stft.mel_scale.fb"] = torch.zeros(513, 100)
    state["ema_model.mel_spec.mel_stft.spectrogram.window"] = torch.zeros(1024)
    assert_same_state(load_modified(state, tmp_path), model)


def test_trainer_checkpoint_loads_online_or_ema_weights(tmp_path):
    ema, online = random_model(seed=1), random_model(seed=2)
    path = tmp_path / "model_last.pt"
    torch.save(
        {
            "model_state_dict": online.state_dict(),
            "ema_model_state_dict": {
                "initted": torch.tensor(True),
                "step": torch.tensor(7),
                **{f"ema_model.{k}": v for k, v in ema.state_dict().items()},
            },
            "update": 7,
        },
        path,
    )
    config = small_config().model_dump()
    assert_same_state(load_f5_checkpoint(path, config), ema)
    assert_same_state(load_f5_checkpoint(path, config, use_ema=False), online)


class PickledPayload:
    """Unpickling this would create ``marker``: a stand-in for code hidden in a hostile ``.pt``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pt_files_are_never_unpickled_beyond_tensors(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "hostile.pt"
    torch.save(
        {
            "ema_model_state_dict": {"ema_model.transformer.proj_out.bias": torch.zeros(100)},
            "payload": PickledPayload(marker),
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):
        read_official_state(path)
    assert not marker.exists()


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_official_state(tmp_path / "nowhere.pt")


# ---------------------------------------------------------------- vocab extension


def test_extend_vocab_keeps_old_rows_and_outputs(tmp_path):
    model, vocab = random_model(), Vocab(TOKENS)
    symbols = ["a", *(chr(0x1E00 + i) for i in range(300)), "b"]  # two already known, 300 new
    grown, new_vocab, added = extend_vocab(model, vocab, symbols)
    assert added == symbols[1:-1]
    assert new_vocab.tokens == TOKENS + added
    assert grown.config.text_num_embeds == len(TOKENS) + 300

    old_rows = model.transformer.text_embed.text_embed.weight
    rows = grown.transformer.text_embed.text_embed.weight.detach()
    assert rows.shape == (len(TOKENS) + 1 + 300, 32)
    assert torch.equal(rows[: len(TOKENS) + 1], old_rows)
    new_rows = rows[len(TOKENS) + 1 :]
    assert abs(float(new_rows.mean())) < 0.05 and abs(float(new_rows.std()) - 1.0) < 0.05

    text = torch.tensor([[1, 2, 3, 0, 4, 5, 19, -1], [7, 8, 9, 10, 11, 12, 13, 14]])
    assert torch.allclose(forward(grown.eval(), text), forward(model, text), atol=1e-6)

    save_checkpoint(grown, tmp_path / "grown", new_vocab)
    assert load_bundle(tmp_path / "grown").vocab == new_vocab


def test_extend_vocab_is_seeded_and_a_no_op_without_new_symbols():
    model, vocab = random_model(), Vocab(TOKENS)
    first, _, _ = extend_vocab(model, vocab, ["ă", "â"])
    second, _, _ = extend_vocab(model, vocab, ["ă", "â"])
    assert_same_state(first, second)
    same, same_vocab, added = extend_vocab(model, vocab, ["a", "b"])
    assert same is model and same_vocab is vocab and added == []
