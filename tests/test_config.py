"""Configuration (presets, upstream names, strictness, overrides) and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig

import pytest
import torch
from pydantic import ValidationError

from flowtts.config import FlowTTSConfig, ModelConfig, load_config, preset_names
from flowtts.model import build_model
from tests.helpers import REPO

PRESETS = [
    "E2TTS_Base",
    "E2TTS_Small",
    "F5TTS_Base",
    "F5TTS_Small",
    "F5TTS_v1_Base",
    "F5TTS_v1_Small",
    "tiny",
]


def test_every_documented_preset_is_shipped():
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_loads_by_name_and_builds(name):
    config = load_config(name)
    assert config.name == name
    assert config.mel.target_sample_rate == 24000 and config.mel.hop_length == 256
    with torch.device("meta"):
        model = build_model(config.model)
    assert type(model.transformer).__name__ == config.model.backbone


@pytest.mark.parametrize(
    ("name", "v0"),
    [
        ("F5TTS_Base", True),
        ("F5TTS_Small", True),
        ("F5TTS_v1_Base", False),
        ("F5TTS_v1_Small", False),
        ("E2TTS_Base", True),
    ],
)
def test_presets_carry_their_generation_flags(name, v0):
    model = load_config(name).model
    assert (model.pe_attn_head == 1) is v0
    assert model.text_mask_padding is not v0
    assert model.attn_mask_enabled is False  # upstream default in every yaml


def test_tiny_preset_is_the_documented_small_dit():
    model = load_config("tiny").model
    assert (model.backbone, model.dim, model.depth, model.heads, model.dim_head) == ("DiT", 256, 6, 4, 64)
    assert (model.ff_mult, model.text_dim, model.conv_layers, model.pe_attn_head) == (2, 128, 2, None)


def test_config_file_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {dim: 32, depth: 2, heads: 2}\ntrain: {learning_rate: 0.002}\n", encoding="utf-8")
    config = load_config(path)
    assert config.name == "mine" and config.model.dim == 32 and config.train.learning_rate == 0.002


def test_unknown_preset_lists_the_presets():
    with pytest.raises(FileNotFoundError, match="F5TTS_v1_Base.*tiny"):
        load_config("F5TTS_v2_Huge")


def test_fixture_upstream_config_json_validates(dit_fixture):
    upstream = json.loads((dit_fixture / "config.json").read_text())
    config = ModelConfig.from_upstream(upstream)
    assert (config.backbone, config.dim, config.depth, config.heads) == ("DiT", 128, 2, 2)
    assert config.text_num_embeds == upstream["text_num_embeds"] == 143
    assert ModelConfig.from_upstream(config) is config


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (ModelConfig, {"dim": 64, "depth": 2, "heads": 2, "dimm": 3}),
        (FlowTTSConfig, {"model": {"dim": 64, "depth": 2, "heads": 2}, "trainer": {}}),
        (FlowTTSConfig, {"model": {"dim": 64, "depth": 2, "heads": 2}, "train": {"lr": 0.1}}),
    ],
)
def test_extra_keys_are_rejected_by_name(model, data):
    with pytest.raises(ValidationError, match=r"(dimm|trainer|lr)\n\s+Extra inputs are not permitted"):
        model.model_validate(data)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backbone": "UNetT", "depth": 3}, "UNetT needs an even depth, got depth=3"),
        ({"pe_attn_head": 5}, r"pe_attn_head=5 must be in 1..heads \(4\)"),
        ({"backbone": "Conformer"}, "backbone"),
    ],
)
def test_invalid_model_values_are_named(values, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**{"dim": 64, "depth": 2, "heads": 4, **values})


def test_overrides_apply_dotted_keys_and_revalidate():
    base = load_config("tiny")
    tuned = base.with_overrides({"train.learning_rate": 1e-4, "model.depth": 2})
    assert tuned.train.learning_rate == 1e-4 and tuned.model.depth == 2
    assert base.train.learning_rate == 1e-3 and base.model.depth == 6  # the original is untouched
    assert tuned.fingerprint() != base.fingerprint()
    assert base.with_overrides({}).fingerprint() == base.fingerprint()
    with pytest.raises(ValidationError):
        base.with_overrides({"model.depth": "deep"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learnig_rate", "unknown config key 'train.learnig_rate'"),
        ("optimizer.lr", "unknown config section 'optimizer'"),
    ],
)
def test_unknown_override_keys_raise(override, message):
    with pytest.raises(KeyError, match=message):
        load_config("tiny").with_overrides({override: 1})


# ---------------------------------------------------------------- import hygiene


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_stdlib_platform_still_imports_from_the_repo_root():
    assert (REPO / "platform").is_dir()
    location = run_python("import platform; assert platform.system(); print(platform.__file__)")
    assert location.startswith(sysconfig.get_paths()["stdlib"])


def test_importing_flowtts_pulls_in_no_ray_and_changes_nothing():
    report = run_python(
        "import logging, sys, torch\n"
        "threads = torch.get_num_threads()\n"
        "import flowtts, flowtts.config, flowtts.model, flowtts.checkpoint, flowtts.text, flowtts.audio\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
        "print(logging.getLogger().handlers, torch.get_num_threads() == threads)\n"
    )
    assert report.splitlines() == ["[]", "[] True"]
