"""Text conventions travel with the model (issue 17 part 0) and official files are model sources as
downloaded (part 1): the reference fixtures written by the official package, loaded without conversion."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from flowtts.checkpoint import load_f5_checkpoint, save_checkpoint
from flowtts.evaluation.gate import evaluate
from flowtts.model import build_model
from flowtts.model_loading import read_model_config
from flowtts.model_source import resolve_model_source
from flowtts.synthesis import SamplingSettings, SynthesisOptions, Synthesizer
from flowtts.text import TextFrontend, UnknownCharactersError, Vocab
from flowtts.training.data import dataset_text_frontend
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.models import small_model_config
from tests.helpers.shards import write_dataset

REFERENCE_FIXTURES = REPO / "tests" / "fixtures" / "reference"
SR = 24000
FAST = SynthesisOptions(sampling=SamplingSettings(nfe=2), seed=3)


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_front_end_is_the_setting_else_the_recorded_one_and_a_vocab_without_capitals_lowercases():
    lower, mixed = Vocab.from_texts(["xin chào 15"]), Vocab.from_texts(["Xin chào 15"])
    recorded = {"text_frontend": {"normalizer": "plain", "lowercase": False}}
    assert TextFrontend.of_model({}, mixed) == TextFrontend(normalizer="vietnamese", lowercase=False)
    assert TextFrontend.of_model({}, lower) == TextFrontend(normalizer="vietnamese", lowercase=True)
    assert TextFrontend.of_model(recorded, mixed) == TextFrontend(normalizer="plain")
    assert TextFrontend.of_model(recorded, lower) == TextFrontend(normalizer="plain", lowercase=True)
    setting = TextFrontend(normalizer="vietnamese", lowercase=True)
    assert TextFrontend.of_model(recorded, mixed, setting) == setting
    assert TextFrontend(normalizer="vietnamese", lowercase=True)("Xin chào, 15 người") == "xin chào, mười lăm người"
    assert TextFrontend(normalizer="plain")("Xin  chào, 15") == "Xin chào, 15"


def test_our_checkpoint_reads_text_with_its_recorded_front_end(tmp_path):
    vocab = Vocab.from_texts(["Xin chào. 0123456789"])
    torch.manual_seed(0)
    model = build_model(small_model_config(len(vocab), depth=1))
    info = {"text_frontend": {"normalizer": "plain", "lowercase": False}}
    synth = Synthesizer.from_pretrained(save_checkpoint(model, tmp_path / "plain", vocab, info=info))
    reference = synth.prepare_reference(tone(), "Xin chào", SR)
    assert synth.plan("chào 15", reference, FAST).chunks == ["chào 15"]  # plain: digits stay digits
    vietnamese = Synthesizer.from_pretrained(tmp_path / "plain", text_frontend=TextFrontend())
    with pytest.raises(UnknownCharactersError):  # read out as "mười lăm": letters this vocab lacks
        vietnamese.plan("chào 15", reference, FAST)


def test_an_official_file_with_a_lowercase_vocab_answers_capitals(dit_fixture):
    """The shared fixture: model.safetensors with its vocab.txt beside it (lowercase only) and config.json."""
    synth = Synthesizer.from_pretrained(dit_fixture / "model.safetensors", model_config=dit_fixture / "config.json")
    assert synth.frontend == TextFrontend(normalizer="vietnamese", lowercase=True)
    assert synth.model_info["format"] == "f5-tts"
    reference = synth.prepare_reference(tone(), "Xin chào các bạn", SR)
    assert reference.text == "xin chào các bạn. "
    capitals = synth.synthesize("Xin chào", reference, FAST)
    lower = synth.synthesize("xin chào", reference, FAST)
    assert capitals.chunks == ["xin chào"] and np.array_equal(capitals.audio, lower.audio)


@pytest.mark.parametrize("name", sorted(p.name for p in REFERENCE_FIXTURES.iterdir() if p.is_dir()))
@pytest.mark.parametrize("file", ["model.safetensors", "model_last.pt"])
def test_every_official_fixture_loads_as_a_model_source(name, file, tmp_path):
    folder = REFERENCE_FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    vocab = Vocab([" ", *[chr(ord("a") + i) for i in range(config["text_num_embeds"] - 1)]])
    vocab.save(tmp_path / "vocab.txt")
    synth = Synthesizer.from_pretrained(
        folder / file, vocab=tmp_path / "vocab.txt", model_config=folder / "config.json"
    )
    expected = load_f5_checkpoint(folder / file, config)
    got = synth.model.state_dict()
    assert got.keys() == expected.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())
    assert synth.model_info["source"] == str(folder / file)


def test_upstream_yaml_and_presets_are_model_configs(tmp_path, dit_fixture):
    config = json.loads((dit_fixture / "config.json").read_text())
    arch = {k: v for k, v in config.items() if k not in ("backbone", "reference", "mel_dim", "text_num_embeds")}
    lines = ["model:", "  name: tiny_upstream", "  tokenizer: custom", "  backbone: DiT", "  arch:"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in arch.items()] + ["    attn_backend: sdpa"]
    lines += ["  mel_spec:", "    target_sample_rate: 24000", "    n_mel_channels: 100"]
    (tmp_path / "upstream.yaml").write_text("\n".join(lines) + "\n")
    synth = Synthesizer.from_pretrained(dit_fixture / "model.safetensors", model_config=tmp_path / "upstream.yaml")
    assert synth.model.config.dim == config["dim"] and synth.model.config.text_num_embeds == len(synth.vocab)
    assert read_model_config("F5TTS_v1_Base").dim == 1024  # the default of an official file
    with pytest.raises(FileNotFoundError, match="neither a file nor a preset"):
        read_model_config("F5TTS_v9_Huge")


def test_evaluation_takes_an_official_file(dit_fixture, tmp_path, capsys):
    dataset = write_dataset(tmp_path / "data", SAMPLE_CORPUS, count=4, heldout=2)
    source = resolve_model_source(dit_fixture / "model.safetensors")
    config = dit_fixture / "config.json"
    result = evaluate(source, dataset, nfe=2, max_items=1, out_dir=tmp_path / "eval", model_config=config)
    assert result.summary["model/truth/mcd_dtw"] > 0 and result.report.is_file()
    spec = importlib.util.spec_from_file_location("evaluate_job", REPO / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = ["--model", str(dit_fixture / "model.safetensors"), "--model-config", str(config), "--data", str(dataset)]
    assert job.main([*argv, "--nfe", "2", "--max-items", "1", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").is_file() and "MCD" in capsys.readouterr().out


def test_preprocessing_records_the_front_end_that_training_reads(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps({"settings": {"text_frontend": "vietnamese", "lowercase": True}})
    )
    assert dataset_text_frontend(tmp_path) == TextFrontend(normalizer="vietnamese", lowercase=True)
    assert dataset_text_frontend(tmp_path / "none") is None
