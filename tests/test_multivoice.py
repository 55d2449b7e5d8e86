"""Several voices in one text (issue 17 part 2) and references transcribed by an ASR model (part 4), in the
Python ``Synthesizer`` and the CLI. A small random DiT, Griffin-Lim, and a tiny local CTC model."""

from __future__ import annotations

import importlib.util
import re
import string

import numpy as np
import pytest
import soundfile as sf
import torch

from flowtts.model import build_model
from flowtts.synthesis import (
    CROSS_FADE_S,
    GriffinLimVocoder,
    InvalidOptionsError,
    SamplingSettings,
    Segment,
    SynthesisOptions,
    Synthesizer,
    Transcriber,
    TranscriptRequiredError,
    UnknownVoiceError,
    split_voice_tags,
    voice_names,
)
from flowtts.text import Vocab
from tests.helpers import REPO
from tests.helpers.asr import write_ctc_asr, write_whisper_asr
from tests.helpers.models import small_model_config

SR = 24000
SAMPLING = SamplingSettings(nfe=2)


def voice(seconds: float, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    body = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t))
    pad = np.zeros(int(0.2 * SR))
    return np.concatenate([pad, body, pad]).astype(np.float32)


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    letters = "àáạảãâầấậẩẫăằắặẳẵèéẹẻẽêềếệểễìíịỉĩòóọỏõôồốộổỗơờớợởỡùúụủũưừứựửữỳýỵỷỹđ"
    vocab = Vocab.from_texts([string.ascii_letters + letters + letters.upper() + " .,!?"])
    torch.manual_seed(0)
    return Synthesizer(build_model(small_model_config(len(vocab))).eval(), vocab, GriffinLimVocoder())


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_ctc_asr(tmp_path_factory.mktemp("ctc-asr"))


def test_tags_split_the_text_into_voiced_segments():
    text = "Chào anh. [lan] Chào em, [minh speed=1.3] khỏe không? [main] Tạm biệt [1] nhé. [không phải!]"
    assert split_voice_tags(text) == [
        Segment(None, "Chào anh."),
        Segment("lan", "Chào em,"),
        Segment("minh", "khỏe không?", 1.3),
        Segment(None, "Tạm biệt"),
        Segment("1", "nhé. [không phải!]"),
    ]
    assert voice_names(text) == ["lan", "minh", "1"]
    assert split_voice_tags("no tags here") == [Segment(None, "no tags here")]
    with pytest.raises(ValueError, match="nothing to say outside its voice tags"):
        split_voice_tags("[lan] [minh]")


def test_multi_voice_equals_its_segments_rendered_alone_up_to_the_cross_fades(synth):
    main = synth.prepare_reference(voice(1.2, 140), "Xin chào", SR)
    voices = {"lan": synth.prepare_reference(voice(1.0, 220), "Chào bạn", SR)}
    text = "Hôm nay trời đẹp. [lan speed=1.5] Đúng vậy, đi dạo nhé! [main] Được."
    options = SynthesisOptions(sampling=SAMPLING, seed=11)
    plan = synth.plan_voices(text, main, options, voices)
    assert [len(p.items) for p in plan.segments] == [1, 1, 1] and plan.seed == 11
    assert [p.options.speed for p in plan.segments] == [1.0, 1.5, 1.0]

    result = synth.render_voices(plan, synth.generate(plan.items, SAMPLING))  # one sample() call, 3 rows
    assert result.chunks == ["Hôm nay trời đẹp.", "Đúng vậy, đi dạo nhé!", "Được."]
    assert np.array_equal(result.audio, synth.synthesize(text, main, options, voices).audio)

    alone = [
        synth.synthesize("Hôm nay trời đẹp.", main, SynthesisOptions(sampling=SAMPLING, seed=11)).audio,
        synth.synthesize("Đúng vậy, đi dạo nhé!", voices["lan"], SynthesisOptions(SAMPLING, speed=1.5, seed=12)).audio,
        synth.synthesize("Được.", main, SynthesisOptions(sampling=SAMPLING, seed=13)).audio,
    ]
    fade = int(CROSS_FADE_S * SR)
    assert len(result.audio) == sum(len(a) for a in alone) - 2 * fade
    start = 0
    for index, audio in enumerate(alone):  # every sample away from a join is the segment's own sample
        inner = slice(fade if index else 0, len(audio) - (fade if index < 2 else 0))
        np.testing.assert_allclose(result.audio[start:][inner], audio[inner], atol=1e-5)
        start += len(audio) - fade


def test_unknown_voices_and_fixed_duration_with_tags_are_refused_by_name(synth):
    main = synth.prepare_reference(voice(1.0, 140), "Xin chào", SR)
    with pytest.raises(UnknownVoiceError, match=r"\[anna\], \[bao\] name no voice") as caught:
        synth.plan_voices("a [anna] b [bao] c", main, SynthesisOptions(seed=1), {})
    assert caught.value.names == ("anna", "bao")
    with pytest.raises(InvalidOptionsError, match="fix_duration"):
        synth.plan_voices("a [lan] b", main, SynthesisOptions(fix_duration=3.0), {"lan": main})
    with pytest.raises(InvalidOptionsError, match="speed=0"):
        synth.plan_voices("a [lan speed=0] b", main, SynthesisOptions(), {"lan": main})


def test_an_empty_transcript_needs_an_asr_model_and_is_transcribed_with_one(synth, asr_model):
    with pytest.raises(TranscriptRequiredError, match="no ASR model is configured"):
        synth.prepare_reference(voice(1.0, 140), "  ", SR)
    ctc = Transcriber(asr_model)
    assert not ctc.seq2seq
    listening = Synthesizer(synth.model, synth.vocab, synth.vocoder, transcriber=ctc)
    reference = listening.prepare_reference(voice(1.0, 140), "", SR)
    assert (reference.transcript, reference.text) == ("a", "a. ")
    given = listening.prepare_reference(voice(1.0, 140), "Xin chào", SR)
    assert given.transcript == "Xin chào" and np.array_equal(given.mel, reference.mel)


def test_whisper_style_models_transcribe_with_generate(tmp_path):
    pytest.importorskip("transformers")
    whisper = Transcriber(write_whisper_asr(tmp_path / "whisper"))
    assert whisper.seq2seq
    assert re.fullmatch("a+", whisper.transcribe(voice(1.0, 140), SR))


def test_cli_speaks_several_voices_and_transcribes_an_empty_one(synth, asr_model, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("synthesize_job", REPO / "jobs" / "synthesize.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    from flowtts.checkpoint import save_checkpoint

    model = save_checkpoint(synth.model, tmp_path / "model", synth.vocab)
    for name, pitch in (("main", 140), ("lan", 220), ("minh", 90)):
        sf.write(tmp_path / f"{name}.wav", voice(1.0, pitch), SR)
    common = ["--model", str(model), "--ref-audio", str(tmp_path / "main.wav"), "--ref-text", "Xin chào"]
    common += ["--nfe", "2", "--seed", "4", "--vocoder", "nobody-here/no-vocos"]  # not cached: Griffin-Lim
    text = "Chào anh. [lan] Chào em. [minh] Chào cả hai."
    voices = ["--voice", f"lan={tmp_path / 'lan.wav'}|Chào bạn", "--voice", f"minh={tmp_path / 'minh.wav'}"]
    out = tmp_path / "talk.wav"
    assert job.main([*common, *voices, "--asr-model", str(asr_model), "--text", text, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "--voice minh transcribed: a" in lines and "3 chunk(s)" in lines[-1]
    assert sf.info(out).samplerate == SR
    assert job.main([*common, *voices, "--text", text, "--out", str(out)]) == 2
    assert "no ASR model is configured" in capsys.readouterr().err
    assert job.main([*common, "--text", "[bao] Chào.", "--out", str(out)]) == 2
    assert "[bao] name no voice" in capsys.readouterr().err
