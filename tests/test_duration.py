"""The learned duration predictor: it trains, beats the byte-ratio rule, is saved with our format and
never leaks into official checkpoints; synthesis uses it and says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from flowtts.checkpoint import export_f5_checkpoint, load_bundle, read_official_state, save_checkpoint
from flowtts.config import DurationPredictorConfig, load_config
from flowtts.evaluation import mape
from flowtts.model import build_model
from flowtts.synthesis import GriffinLimVocoder, SynthesisOptions, Synthesizer, byte_ratio_frames
from flowtts.synthesis.duration import predicted_frames
from flowtts.text import Vocab
from flowtts.training.duration import load_clips, same_speaker_pairs, train_duration_predictor, with_duration_predictor

sys.path.insert(0, str(Path(__file__).parent))
from _shards import write_dataset  # noqa: E402
from conftest import SAMPLE_CORPUS  # noqa: E402

SMALL = DurationPredictorConfig(dim=64, conv_layers=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = write_dataset(tmp_path_factory.mktemp("dur") / "data", SAMPLE_CORPUS, 16)
    return out


def speakered(dataset: Path, vocab: Vocab):
    clips = load_clips(dataset, vocab)
    for i, clip in enumerate(clips):  # the sample corpus alternates its two speakers
        clip.speaker = f"spk{i % 2}"
    return clips


def tiny_model(vocab: Vocab, predictor: DurationPredictorConfig | None = SMALL):
    config = load_config("tiny").model.with_vocab_size(len(vocab)).model_copy(
        update={"duration_predictor": predictor, "depth": 2})
    torch.manual_seed(0)
    return build_model(config)


def test_predictor_learns_durations_better_than_the_byte_ratio_rule(dataset):
    vocab = Vocab.load(dataset / "vocab.txt")
    clips = speakered(dataset, vocab)
    model = tiny_model(vocab)
    losses = train_duration_predictor(model, clips, steps=100, batch_size=12, lr=4e-3)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    pairs = same_speaker_pairs(clips)
    truth = [clips[a].mel.shape[0] for a, _ in pairs]
    ratio = [byte_ratio_frames(clips[b].mel.shape[0], vocab.decode(clips[b].prompt_ids),
                               vocab.decode(clips[a].text_ids), 1.0) - clips[b].mel.shape[0] for a, b in pairs]
    learned = [predicted_frames(model.duration_predictor, clips[b].prompt_ids, clips[b].mel, [clips[a].text_ids],
                                1.0)[0] for a, b in pairs]
    assert mape(learned, truth) < 0.6 * mape(ratio, truth), (mape(learned, truth), mape(ratio, truth))


def test_untrained_predictor_starts_at_the_character_ratio(dataset):
    vocab = Vocab.load(dataset / "vocab.txt")
    clips = speakered(dataset, vocab)
    model = tiny_model(vocab)
    ref, target = clips[0], clips[2]
    got = predicted_frames(model.duration_predictor, ref.prompt_ids, ref.mel, [target.text_ids], 1.0)[0]
    want = ref.mel.shape[0] * len(target.text_ids) / len(ref.prompt_ids)
    assert got == pytest.approx(want, abs=1)
    assert predicted_frames(model.duration_predictor, ref.prompt_ids, ref.mel, [target.text_ids], 2.0)[0] == \
        pytest.approx(want / 2, abs=1)


def test_predictor_round_trips_and_stays_out_of_official_files(dataset, tmp_path):
    vocab = Vocab.load(dataset / "vocab.txt")
    model = tiny_model(vocab)
    torch.nn.init.normal_(model.duration_predictor.head[-1].weight)
    save_checkpoint(model, tmp_path / "ckpt", vocab)
    again = load_bundle(tmp_path / "ckpt").model
    assert again.duration_predictor is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    export_f5_checkpoint(model, tmp_path / "official.safetensors")
    official = read_official_state(tmp_path / "official.safetensors")
    assert not any(k.startswith("duration_predictor.") for k in official)
    assert set(official) == {k for k in model.state_dict() if k.startswith("transformer.")}


def test_with_duration_predictor_keeps_the_cfm_weights(dataset):
    vocab = Vocab.load(dataset / "vocab.txt")
    plain = tiny_model(vocab, predictor=None)
    grown = with_duration_predictor(plain, SMALL)
    assert grown.duration_predictor is not None
    for key, value in plain.state_dict().items():
        assert torch.equal(value, grown.state_dict()[key]), key


def test_synthesis_plan_names_the_rule(dataset):
    vocab = Vocab.load(dataset / "vocab.txt")
    clips = speakered(dataset, vocab)
    ref_audio = SAMPLE_CORPUS / "wavs" / "demo_0001.wav"
    ref_text = (SAMPLE_CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()[1].split("|", 1)[1]
    text = vocab.decode(clips[3].text_ids)
    vocoder = GriffinLimVocoder()
    with_predictor = Synthesizer(tiny_model(vocab), vocab, vocoder)
    without = Synthesizer(tiny_model(vocab, predictor=None), vocab, vocoder)
    reference = with_predictor.prepare_reference(ref_audio, ref_text)
    assert with_predictor.plan(text, reference, SynthesisOptions(seed=1)).duration_rule == "predictor"
    assert without.plan(text, reference, SynthesisOptions(seed=1)).duration_rule == "byte_ratio"
    fixed = with_predictor.plan(text, reference, SynthesisOptions(seed=1, fix_duration=8.0))
    assert fixed.duration_rule == "fixed"
    slow = with_predictor.plan(text, reference, SynthesisOptions(seed=1, speed=0.5)).items[0]
    normal = with_predictor.plan(text, reference, SynthesisOptions(seed=1)).items[0]
    generated = normal.total_frames - normal.prompt_frames
    assert slow.total_frames - slow.prompt_frames == pytest.approx(2 * generated, abs=2)
