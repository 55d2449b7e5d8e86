"""Synthesis: upstream inference rules (reference, duration, chunks, cross-fade), batching, errors, CLI."""

from __future__ import annotations

import importlib.util
import json
import string
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from flowtts.checkpoint import CheckpointError, save_checkpoint
from flowtts.model import build_model
from flowtts.synthesis import (
    OUTPUT_FORMATS,
    EmptyTextError,
    InvalidOptionsError,
    ReferenceAudioError,
    SampleItem,
    SamplingSettings,
    SynthesisOptions,
    Synthesizer,
    UnspeakableTextError,
    VocosVocoder,
    balanced_chunks,
    byte_ratio_frames,
    chunk_text,
    cross_fade,
    encode_audio,
    fixed_frames,
    max_chunk_bytes,
)
from flowtts.synthesis.reference import clip_at_silence, condition_audio, prompt_text, reference_text
from flowtts.synthesis.silence import detect_nonsilent, remove_silences, trim_silence_edges
from flowtts.text import UnknownCharactersError, Vocab, normalize_vietnamese
from tests.helpers import REPO
from tests.helpers.models import small_model_config

SR = 24000
FIXTURE_TOL = 1e-4
BATCH_TOL = 1e-5
FAST = SamplingSettings(nfe=2, cfg_strength=2.0, sway_sampling_coef=-1.0, use_epss=True)


# ---------------------------------------------------------------- builders


def voice(seconds: float, *, pitch: float = 140.0, amplitude: float = 0.3, pad_s: float = 0.2) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal with ``pad_s`` of silence at both ends."""
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 6))
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)
    body = amplitude * tone * syllables / np.abs(tone).max()
    pad = np.zeros(int(pad_s * SR))
    return np.concatenate([pad, body, pad]).astype(np.float32)


def small_vocab() -> Vocab:
    latin = [chr(c) for c in [*range(0xC0, 0x250), *range(0x1E00, 0x1F00)] if unicodedata.category(chr(c))[0] == "L"]
    return Vocab.from_texts([string.ascii_letters + "".join(latin) + " .,!?;:-'\"()"])


def random_model(vocab: Vocab, seed: int = 0):
    """A small DiT whose every weight is random (no zero-init gates), so attention and text matter."""
    config = small_model_config(len(vocab))
    torch.manual_seed(seed)
    model = build_model(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="session")
def vocos_dir(tmp_path_factory):
    """A randomly initialised Vocos saved in the published layout (config.yaml + pytorch_model.bin)."""
    from vocos import Vocos

    folder = tmp_path_factory.mktemp("vocos")
    (folder / "config.yaml").write_text(
        "feature_extractor: {class_path: vocos.feature_extractors.MelSpectrogramFeatures,\n"
        "  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}}\n"
        "backbone: {class_path: vocos.models.VocosBackbone,\n"
        "  init_args: {input_channels: 100, dim: 64, intermediate_dim: 192, num_layers: 2}}\n"
        "head: {class_path: vocos.heads.ISTFTHead, init_args: {dim: 64, n_fft: 1024, hop_length: 256, "
        "padding: center}}\n"
    )
    torch.manual_seed(0)
    torch.save(Vocos.from_hparams(str(folder / "config.yaml")).state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def synth(vocos_dir) -> Synthesizer:
    vocab = small_vocab()
    return Synthesizer(random_model(vocab), vocab, VocosVocoder.from_folder(vocos_dir))


@pytest.fixture(scope="module")
def reference(synth):
    return synth.prepare_reference(voice(1.2), "Xin chào", sample_rate=SR)


LONG_TEXT = (
    "Hôm nay trời đẹp, chúng ta đi dạo nhé. Buổi chiều có mưa nhỏ! Tối về nhà ăn cơm với gia đình, "
    "rồi đọc sách một lúc. Ngày mai lại là một ngày mới, ta sẽ dậy sớm và chạy bộ quanh hồ. "
    "Sau đó uống cà phê."
)


# ---------------------------------------------------------------- parity with the reference fixtures


@pytest.mark.parametrize("steps", [8, 7])
def test_sampling_matches_fixture(dit_fixture, steps):
    synthesizer = Synthesizer.from_pretrained(
        dit_fixture / "model.safetensors",
        vocab=dit_fixture / "vocab.txt",
        model_config=dit_fixture / "config.json",
    )
    cases = load_file(str(dit_fixture / "cases.safetensors"))
    ids = [i for i in cases["fwd_text"][1].tolist() if i != -1]
    item = SampleItem(cond=cases["smp_cond"][0], text_ids=ids, total_frames=90, prompt_frames=40, seed=1234)
    (mel,) = synthesizer.generate(
        [item], SamplingSettings(nfe=steps, cfg_strength=2.0, sway_sampling_coef=-1.0, use_epss=True)
    )
    expected = cases[f"smp_out_steps{steps}"][0, 40:90]
    assert mel.shape == expected.shape
    assert float((mel - expected).abs().max()) <= FIXTURE_TOL


def test_fixture_text_ids_come_from_the_reference_tokens(dit_fixture):
    """The fixture's ids are plain characters; our prompt adds upstream's ". " and joining space."""
    synthesizer = Synthesizer.from_pretrained(
        dit_fixture / "model.safetensors",
        vocab=dit_fixture / "vocab.txt",
        model_config=dit_fixture / "config.json",
    )
    texts = json.loads((dit_fixture / "cases.json").read_text())["texts"]
    ref = synthesizer.prepare_reference(voice(1.0), texts[0], sample_rate=SR)
    plan = synthesizer.plan(texts[1], ref, SynthesisOptions(seed=3))
    assert ref.prompt_text == texts[0] + ".  "
    assert plan.items[0].text_ids == synthesizer.vocab.encode(texts[0] + ".") + [
        0,
        0,
    ] + synthesizer.vocab.encode(texts[1])


# ---------------------------------------------------------------- duration, chunks, cross-fade


def test_byte_ratio_duration_known_inputs():
    prompt = "xin chào.  "  # 12 bytes: "à" is 2
    assert byte_ratio_frames(300, prompt, "hôm nay trời đẹp quá", 1.0) == 300 + int(300 / 12 * 27 / 1.0)
    assert byte_ratio_frames(300, prompt, "hôm nay trời đẹp quá", 1.5) == 300 + int(300 / 12 * 27 / 1.5)
    # under 10 bytes the speed is 0.3 whatever was asked
    assert byte_ratio_frames(300, prompt, "vâng ạ", 1.0) == 300 + int(300 / 12 * 9 / 0.3)
    assert byte_ratio_frames(300, prompt, "vâng ạ", 2.0) == 300 + int(300 / 12 * 9 / 0.3)


def test_fixed_duration_known_inputs():
    assert fixed_frames(5.0, 100, ["một câu"], 0.15) == [int(5.0 * SR / 256)]
    two = fixed_frames(10.0, 100, ["aaaa", "bb"], 0.15)
    generated = 10.0 * SR / 256 - 100 + 0.15 * SR / 256
    assert two == [100 + int(generated * 4 / 6), 100 + int(generated * 2 / 6)]
    with pytest.raises(InvalidOptionsError, match="fix_duration=1.0"):
        fixed_frames(1.0, 100, ["x"], 0.15)


def test_chunk_budget_formula():
    assert max_chunk_bytes("xin chào. ", 3.0) == int(11 / 3.0 * (22 - 3.0))
    assert max_chunk_bytes("xin chào. ", 3.0, speed=1.5) == int(11 / 3.0 * (22 - 3.0) * 1.5)


def test_chunk_boundaries_known_inputs():
    assert chunk_text("aaa bbb. ccc, ddd eee! fff", 12) == ["aaa bbb.", "ccc,", "ddd eee! fff"]
    assert chunk_text("aaa bbb. ccc, ddd eee! fff", 100) == ["aaa bbb. ccc, ddd eee! fff"]
    # bytes, not characters: "đẹp" is 6 bytes, so only one sentence fits in 12
    assert chunk_text("đẹp đẹp. đẹp đẹp.", 15) == ["đẹp đẹp.", "đẹp đẹp."]
    # no split inside "3.5" (no space after the dot); full-width punctuation splits without a space
    assert chunk_text("pi la 3.5 nhe. xong", 14) == ["pi la 3.5 nhe.", "xong"]
    assert chunk_text("你好。再见。", 6) == ["你好。", "再见。"]
    # balanced: upstream's count (2) and budget, even sizes (17 + 9 bytes -> 11 + 15)
    text = "aaaa. bbbb. cccc. dddd. ee."
    assert chunk_text(text, 18) == ["aaaa. bbbb. cccc.", "dddd. ee."]
    assert balanced_chunks(text, 18) == ["aaaa. bbbb.", "cccc. dddd. ee."]
    assert balanced_chunks("aaa bbb. ccc, ddd eee! fff", 12) == ["aaa bbb.", "ccc,", "ddd eee! fff"]
    # a run without punctuation longer than the budget is cut at spaces
    assert chunk_text("mot hai ba bon nam sau bay", 10) == ["mot hai ba", "bon nam", "sau bay"]


def test_cross_fade_length_and_ramp():
    a, b = np.ones(SR, dtype=np.float32), np.zeros(SR // 2, dtype=np.float32)
    joined = cross_fade([a, b], SR)
    fade = int(0.15 * SR)
    assert fade == 3600 and len(joined) == SR + SR // 2 - fade
    np.testing.assert_allclose(joined[SR - fade : SR], np.linspace(1, 0, fade), atol=1e-6)
    short = cross_fade([a, np.ones(100, dtype=np.float32)], SR)  # overlap capped by the shorter wave
    assert len(short) == SR
    assert len(cross_fade([a, b, a], SR)) == 2 * SR + SR // 2 - 2 * fade


def test_plan_uses_upstream_rules(synth, reference):
    plan = synth.plan(LONG_TEXT, reference, SynthesisOptions(seed=7))
    budget = max_chunk_bytes(reference.text, reference.duration_s)
    assert len(plan.chunks) > 1 and all(len(c.encode()) <= budget for c in plan.chunks)
    assert plan.chunks == balanced_chunks(normalize_vietnamese(LONG_TEXT), budget)
    assert " ".join(plan.chunks) == normalize_vietnamese(LONG_TEXT)
    assert plan.duration_rule == "byte_ratio" and plan.seed == 7
    for index, (chunk, item) in enumerate(zip(plan.chunks, plan.items, strict=True)):
        assert item.seed == 7 + index
        assert item.prompt_frames == len(reference.audio) // 256 == reference.mel.shape[0] - 1
        assert item.total_frames == byte_ratio_frames(item.prompt_frames, reference.prompt_text, chunk, 1.0)
        assert item.text_ids == reference.tokens + synth.vocab.encode(chunk)
    fixed = synth.plan("Một câu ngắn thôi.", reference, SynthesisOptions(seed=1, fix_duration=4.0))
    assert fixed.duration_rule == "fixed" and fixed.items[0].total_frames == int(4.0 * SR / 256)


def test_seed_is_drawn_and_reported(synth, reference):
    plan = synth.plan("Một câu.", reference, SynthesisOptions())
    assert isinstance(plan.seed, int) and plan.items[0].seed == plan.seed


# ---------------------------------------------------------------- batching


def test_batched_chunks_equal_one_by_one(synth, reference):
    options = SynthesisOptions(
        sampling=SamplingSettings(nfe=2), seed=11, fix_duration=4.0
    )  # short rows keep the test fast
    plan = synth.plan(LONG_TEXT, reference, options)
    assert len({item.total_frames for item in plan.items}) > 1  # rows really are padded in the batch
    together = synth.synthesize(LONG_TEXT, reference, options)
    alone = [synth.generate([item], FAST)[0] for item in plan.items]
    one_by_one = synth.render(plan, alone)
    assert float((together.mel - one_by_one.mel).abs().max()) <= BATCH_TOL
    np.testing.assert_allclose(together.audio, one_by_one.audio, atol=BATCH_TOL)
    waves = synth.vocode(alone)
    assert len(together.audio) == sum(len(w) for w in waves) - int(0.15 * SR) * (len(waves) - 1)
    assert together.seed == 11 and together.chunks == plan.chunks and together.audio.dtype == np.float32
    assert together.duration_rule == "fixed" and abs(together.duration_s + reference.duration_s - 4.0) < 0.05


def test_rows_of_different_requests_do_not_affect_each_other(synth, reference):
    other_ref = synth.prepare_reference(voice(0.8, pitch=210.0, amplitude=0.05), "Giọng khác.", SR)
    plan_a = synth.plan(LONG_TEXT, reference, SynthesisOptions(seed=1, fix_duration=4.0))
    plan_b = synth.plan("Chào buổi sáng!", other_ref, SynthesisOptions(seed=2))
    assert plan_b.duration_rule == "byte_ratio" and plan_b.items[0].cond.shape != plan_a.items[0].cond.shape
    mixed = synth.generate(plan_a.items + plan_b.items, FAST)
    separate = synth.generate(plan_a.items, FAST) + synth.generate(plan_b.items, FAST)
    for got, want in zip(mixed, separate, strict=True):
        assert got.shape == want.shape and float((got - want).abs().max()) <= BATCH_TOL


# ---------------------------------------------------------------- reference preparation


def test_reference_text_ending():
    assert reference_text("xin chào", normalize_vietnamese) == "xin chào. "
    assert reference_text("xin chào.", normalize_vietnamese) == "xin chào. "
    assert reference_text("xin chào!", normalize_vietnamese) == "xin chào!. "  # upstream appends ". " to "!"
    assert reference_text("có 2 con mèo", normalize_vietnamese) == "có hai con mèo. "
    assert prompt_text("xin chào. ") == "xin chào.  "
    assert prompt_text("你好。") == "你好。"


def test_reference_audio_is_trimmed_padded_and_scaled(synth):
    quiet = voice(1.0, amplitude=0.05, pad_s=0.5)  # upstream trims at -42 dBFS before raising the RMS
    ref = synth.prepare_reference(quiet, "xin chào", sample_rate=SR)
    sound = len(trim_silence_edges(quiet, SR))
    assert len(ref.audio) == sound + int(0.05 * SR)
    assert np.sqrt(np.mean(ref.audio.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-4)
    assert ref.rms_scale == pytest.approx(
        float(np.sqrt(np.mean(np.concatenate([trim_silence_edges(quiet, SR), np.zeros(int(0.05 * SR))]) ** 2))) / 0.1,
        rel=1e-4,
    )
    assert ref.mel.shape == (len(ref.audio) // 256 + 1, 100)
    loud = synth.prepare_reference(voice(1.0, amplitude=0.8), "xin chào", sample_rate=SR)
    assert loud.rms_scale == 1.0


def test_reference_resampled_from_other_rates(synth, tmp_path):
    wav = voice(1.0)
    path = tmp_path / "ref8k.flac"
    sf.write(path, wav[::3], 8000)  # 8 kHz file
    ref = synth.prepare_reference(path, "xin chào")
    assert abs(ref.duration_s - (len(trim_silence_edges(wav, SR)) / SR + 0.05)) < 0.03


def test_long_reference_clipped_at_a_pause():
    sentence = voice(4.0, pad_s=0.0)
    pause = np.zeros(int(1.5 * SR), dtype=np.float32)
    long = np.concatenate([sentence, pause, sentence, pause, sentence, pause, sentence])  # 20.5 s
    # segments keep 1 s of pause each side, meeting halfway: 4.75 s, 5.5 s, 5.5 s, 4.75 s; the third
    # would pass 12 s once more than 6 s is kept, so the reference ends inside the second pause
    assert np.array_equal(clip_at_silence(long, SR), long[: int(10.25 * SR)])
    hard = clip_at_silence(voice(15.0, pad_s=0.0), SR)  # no pause at all: hard cut
    assert len(hard) == 12 * SR


def test_reference_from_dev_corpus(synth, dev_corpus):
    name, text = (dev_corpus / "metadata.csv").read_text(encoding="utf-8").splitlines()[1].split("|", 1)
    ref = synth.prepare_reference(dev_corpus / name, text)
    assert 0.3 < ref.duration_s <= 12.05 and ref.text.endswith(". ")
    assert ref.tokens[-2:] == [0, 0] and ref.audio.dtype == np.float32


# ---------------------------------------------------------------- silence


def test_silence_split_and_removal():
    sound, gap = voice(1.0, pad_s=0.0), np.zeros(3 * SR, dtype=np.float32)
    wav = np.concatenate([sound, gap, sound])
    assert detect_nonsilent(wav, SR, 1000, -50.0) == [(0, SR), (4 * SR, 5 * SR)]
    shortened = remove_silences(wav, SR)
    assert len(shortened) == 2 * SR + SR  # the 3 s pause keeps 0.5 s on each side
    assert len(remove_silences(np.zeros(SR, dtype=np.float32), SR)) == SR


def test_condition_audio_rejects_silence():
    with pytest.raises(ReferenceAudioError, match="0.3 s"):
        condition_audio(np.zeros(2 * SR, dtype=np.float32), SR)


def test_remove_silence_option_runs(synth, reference):
    result = synth.synthesize(
        "Một câu ngắn.", reference, SynthesisOptions(sampling=SamplingSettings(nfe=2), seed=0, remove_silence=True)
    )
    assert result.audio.size > 0 and np.abs(result.audio).max() <= 0.999 + 1e-6


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_typed_errors(synth, reference, tmp_path):
    with pytest.raises(EmptyTextError, match="text is empty"):
        synth.plan("   ", reference, SynthesisOptions())
    with pytest.raises(UnspeakableTextError, match="nothing speakable"):
        synth.plan("... !!! ???", reference, SynthesisOptions())
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(ReferenceAudioError, match="notes.wav"):
        synth.prepare_reference(not_audio, "xin chào")
    with pytest.raises(ReferenceAudioError, match=r"at least 0.3 s"):
        synth.prepare_reference(voice(0.2), "xin chào", sample_rate=SR)
    with pytest.raises(EmptyTextError, match="reference text"):
        synth.prepare_reference(voice(1.0), "", sample_rate=SR)
    with pytest.raises(ReferenceAudioError, match="sample_rate"):
        synth.prepare_reference(voice(1.0), "xin chào")
    with pytest.raises(UnknownCharactersError, match="U\\+4F60"):
        synth.plan("xin chào 你", reference, SynthesisOptions())
    with pytest.raises(InvalidOptionsError, match="nfe=0"):
        SamplingSettings(nfe=0)
    with pytest.raises(InvalidOptionsError, match="speed=0"):
        SynthesisOptions(speed=0)


# ---------------------------------------------------------------- loading and output


def test_from_pretrained_our_folder(tmp_path, vocos_dir):
    vocab = small_vocab()
    folder = save_checkpoint(random_model(vocab, seed=3), tmp_path / "ckpt", vocab, info={"step": 5})
    synthesizer = Synthesizer.from_pretrained(folder, vocoder=vocos_dir)
    frontend = {"normalizer": "vietnamese", "lowercase": False}  # nothing recorded: the default; capitals in the vocab
    assert synthesizer.model_info == {"step": 5, "source": str(folder), "text_frontend": frontend}
    assert isinstance(synthesizer.vocoder, VocosVocoder) and synthesizer.vocab == vocab
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        Synthesizer.from_pretrained(tmp_path / "missing")


def test_official_checkpoint_without_a_vocab_beside_it_needs_one(tmp_path, dit_fixture):
    (tmp_path / "model.safetensors").write_bytes((dit_fixture / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="needs its vocab.txt"):
        Synthesizer.from_pretrained(tmp_path / "model.safetensors", model_config=dit_fixture / "config.json")


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_output_formats_never_clip(tmp_path, fmt):
    loud = 5.0 * voice(1.0, pad_s=0.0)  # speech-like, peaking at 1.5
    data = encode_audio(loud, SR, fmt)
    if fmt in {"raw", "pcm"}:
        samples = np.frombuffer(data, dtype="<i2")
        assert len(samples) == SR and np.abs(samples).max() < 32767
        return
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(data)
    decoded, rate = sf.read(path, dtype="float32")
    assert rate == SR and abs(len(decoded) - SR) < 0.1 * SR and np.abs(decoded).max() <= 1.0


def cli_args(dit_fixture, vocos_dir, ref, out, *more: str) -> list[str]:
    return [
        *("--model", str(dit_fixture / "model.safetensors"), "--vocab", str(dit_fixture / "vocab.txt")),
        *("--model-config", str(dit_fixture / "config.json"), "--ref-audio", str(ref)),
        *("--ref-text", "xin chào các bạn", "--text", "hôm nay là ngày 15/8/2024, trời đẹp quá.", "--out", str(out)),
        *("--nfe", "2", "--seed", "5", "--vocoder", str(vocos_dir), *more),
    ]


def synthesize_job():
    spec = importlib.util.spec_from_file_location("synthesize_job", REPO / "jobs" / "synthesize.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_cli_speaks_with_the_fixture_model_keeping_the_best_of_two_candidates(dit_fixture, vocos_dir, tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.helpers.asr import write_ctc_asr

    job, ref, out = synthesize_job(), tmp_path / "ref.wav", tmp_path / "out.flac"
    sf.write(ref, voice(1.0), SR)
    assert job.main(cli_args(dit_fixture, vocos_dir, ref, out, "--candidates", "2")) == 2
    assert "--candidates 2 needs an ASR judge: give --judge-asr-model" in capsys.readouterr().err
    judge = str(write_ctc_asr(tmp_path / "asr"))  # hears "a" everywhere: the candidates tie, candidate 0 stays
    assert job.main(cli_args(dit_fixture, vocos_dir, ref, out, "--candidates", "2", "--judge-asr-model", judge)) == 0
    audio, rate = sf.read(out)
    *_, chosen, summary = capsys.readouterr().out.strip().splitlines()
    assert rate == SR and len(audio) > 0
    assert "seed 5" in summary and "byte_ratio" in summary and str(out) in summary and "RTF" in summary
    assert chosen.startswith("chunk 1: kept seed 5 of 5 (CER ") and ", 6 (CER " in chosen
    assert summary.endswith("1 chunk(s), best of 2 (kept seeds 5)")


def test_sampling_settings_are_one_hashable_value_held_by_the_options():
    options = SynthesisOptions(sampling=SamplingSettings(nfe=8), seed=3, speed=1.5)
    assert options.sampling == SamplingSettings(nfe=8, cfg_strength=2.0, sway_sampling_coef=-1.0, use_epss=True)
    groups = {SamplingSettings(nfe=8): "a", SamplingSettings(nfe=8, use_epss=False): "b"}
    assert groups[options.sampling] == "a" and len(groups) == 2
    assert SynthesisOptions().sampling == SamplingSettings()
    with pytest.raises(InvalidOptionsError, match="cfg_strength=-1"):
        SamplingSettings(cfg_strength=-1)


# ---------------------------------------------------------------- best of N


def listening_asr(folder):
    """A tiny CTC judge whose random output layer makes its transcript depend on the audio (so candidates get
    different error rates); ``write_ctc_asr``'s own hears every clip as one word."""
    transformers = pytest.importorskip("transformers")
    from tests.helpers.asr import write_ctc_asr

    write_ctc_asr(folder)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    from flowtts.synthesis import Transcriber

    return Transcriber(listening_asr(tmp_path_factory.mktemp("listening-asr")))


def test_candidates_share_one_sampling_call_and_each_chunk_keeps_what_the_judge_scores_best(
    synth, reference, listener, monkeypatch
):
    from flowtts.evaluation.metrics import character_error_rate
    from flowtts.evaluation.reranking import choose_candidate
    from flowtts.synthesis import CandidateJudges

    judged = Synthesizer(synth.model, synth.vocab, synth.vocoder, judges=CandidateJudges(asr=listener))
    options = SynthesisOptions(sampling=FAST, seed=20, fix_duration=4.0, candidates=3)  # short rows: fast
    plan = judged.plan_voices(LONG_TEXT, reference, options)
    n = len(plan.items)
    assert n > 1
    calls, outputs = [], []
    sample, generate = judged.model.sample, judged.generate
    monkeypatch.setattr(judged.model, "sample", lambda **kw: calls.append(kw["seed"]) or sample(**kw))
    monkeypatch.setattr(judged, "generate", lambda items, how: outputs.append(generate(items, how)) or outputs[-1])
    result = judged.synthesize(LONG_TEXT, reference, options)
    monkeypatch.undo()
    assert calls == [list(range(20, 20 + 3 * n))]  # one call: candidate k of chunk i has seed 20 + i + k * n
    assert result.candidates == 3 and len(result.choices) == n
    (rows,) = outputs  # every candidate's mel, row k * n + i: judged again here
    chosen_mels = []
    for i, (chunk, choice) in enumerate(zip(result.chunks, result.choices, strict=True)):
        assert [s.seed for s in choice.scores] == [20 + i + k * n for k in range(3)]
        mels = rows[i::n]
        heard = [listener.transcribe(w * reference.rms_scale, SR) for w in judged.vocode(mels)]
        cer = [character_error_rate(chunk, text) for text in heard]  # the judge's scores, computed again
        assert [s.cer for s in choice.scores] == pytest.approx(cer) and [s.transcript for s in choice.scores] == heard
        assert choice.chosen == choose_candidate(choice.scores) == min(range(3), key=lambda k: (cer[k], k))
        assert result.chosen_seeds[i] == 20 + i + choice.chosen * n
        chosen_mels.append(mels[choice.chosen])
    assert len({s.cer for c in result.choices for s in c.scores}) > 1  # the judge did tell candidates apart
    np.testing.assert_allclose(result.audio, judged.render_voices(plan, chosen_mels).audio, atol=BATCH_TOL)
    # candidate 0 is the result without candidates
    plain = judged.synthesize(LONG_TEXT, reference, SynthesisOptions(sampling=FAST, seed=20, fix_duration=4.0))
    assert plain.candidates == 1 and plain.choices == [] and plain.chosen_seeds == []
    np.testing.assert_allclose(plain.audio, judged.render_voices(plan, rows[:n]).audio, atol=BATCH_TOL)


def test_the_choice_rule_and_its_ties():
    from flowtts.evaluation.reranking import CandidateScore, choose_candidate, rank_candidates

    def score(seed, cer, wer=0.5, similarity=None):
        return CandidateScore(seed=seed, cer=cer, wer=wer, similarity=similarity)

    assert choose_candidate([score(1, 0.2), score(2, 0.1), score(3, 0.3)]) == 1  # lowest CER
    assert choose_candidate([score(1, 0.1, 0.4), score(2, 0.1, 0.2)]) == 1  # then lowest WER
    assert choose_candidate([score(1, 0.1, 0.2, 0.5), score(2, 0.1, 0.2, 0.9)]) == 1  # then highest similarity
    # (the speaker judge breaking the ASR judge's ties end to end: tests/test_serve.py, the official app)
    assert choose_candidate([score(1, 0.1, 0.2, 0.5), score(2, 0.1, 0.2, 0.5)]) == 0  # then the first one
    assert choose_candidate([score(1, 0.0, 0.0), score(2, 0.0, 0.0)]) == 0  # judges can't tell: candidate 0
    assert choose_candidate([score(1, 0.1, 0.2, float("nan")), score(2, 0.1, 0.2, -0.5)]) == 1  # NaN ranks last
    assert choose_candidate([score(1, 0.1, 0.2, None), score(2, 0.1, 0.2, -0.5)]) == 1
    assert choose_candidate([score(1, 0.05, 0.9, -1.0), score(2, 0.1, 0.0, 1.0)]) == 0  # CER first, always
    assert rank_candidates([score(1, 0.3), score(2, 0.1), score(3, 0.2)]) == [1, 2, 0]
    with pytest.raises(ValueError, match="at least one"):
        choose_candidate([])
    assert score(5, 0.123456, 1.0, 0.98765).as_dict() == {"seed": 5, "cer": 0.1235, "wer": 1.0, "similarity": 0.9877}


def test_candidates_need_a_judge_and_a_count_of_at_least_one(synth, reference):
    from flowtts.synthesis import JudgeRequiredError

    with pytest.raises(JudgeRequiredError, match="candidates=2 needs an ASR judge"):
        synth.synthesize("Một câu.", reference, SynthesisOptions(candidates=2))
    with pytest.raises(InvalidOptionsError, match="candidates=0"):
        SynthesisOptions(candidates=0)
