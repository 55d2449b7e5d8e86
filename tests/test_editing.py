"""Speech editing (edit mask, splice, spans, CLI) and the synthesis knobs (ODE rule, cross-fade, target RMS)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from flowtts.model.modules import lens_to_mask
from flowtts.synthesis import (
    InvalidEditError,
    InvalidOptionsError,
    SamplingSettings,
    SynthesisOptions,
    Synthesizer,
    VocosVocoder,
    check_spans,
    init_vocos_folder,
)
from flowtts.synthesis.editing import rate_durations
from flowtts.text import normalize_vietnamese
from tests.helpers import load_job
from tests.helpers.editing import FADE, HOP, kept_runs
from tests.test_synthesis import LONG_TEXT, SR, random_model, small_vocab, voice

FAST = SamplingSettings(nfe=2)
TEXT = "xin chào các bạn thân mến"
NEW_TEXT = "xin chào mọi người thân mến"
SPANS = [(0.5, 0.9), (1.4, 1.8)]


@pytest.fixture(scope="module")
def vocoder_dir(tmp_path_factory):
    return init_vocos_folder(tmp_path_factory.mktemp("vocos") / "v", dim=32, intermediate_dim=64, num_layers=1)


@pytest.fixture(scope="module")
def synth(vocoder_dir) -> Synthesizer:
    vocab = small_vocab()
    return Synthesizer(random_model(vocab), vocab, VocosVocoder.from_folder(vocoder_dir))


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    return voice(2.2, pitch=120.0)


# ---------------------------------------------------------------- the edit


def test_unedited_samples_are_the_original_and_spans_get_their_durations(synth, recording):
    durations = [0.7, 0.25]
    result = synth.edit(recording, TEXT, NEW_TEXT, SPANS, durations=durations, sample_rate=SR, sampling=FAST, seed=4)
    new_frames = [round(d * SR / HOP) for d in durations]
    runs = kept_runs(SPANS, new_frames, len(recording))
    shift = sum(n - (round(e * SR / HOP) - round(s * SR / HOP)) for (s, e), n in zip(SPANS, new_frames, strict=True))
    assert len(result.audio) == len(recording) + shift * HOP
    for index, (start, end, at) in enumerate(runs):
        head = FADE if index > 0 else 0
        tail = FADE if index < len(runs) - 1 else 0
        got = result.audio[at + head : at + (end - start) - tail]
        assert got.size > 1000 and np.array_equal(got, recording[start + head : end - tail]), index
        if tail:  # inside the fade the re-vocoded edit is mixed in
            assert not np.array_equal(
                result.audio[at + end - start - tail : at + end - start], recording[end - tail : end]
            )
    for (start, end), seconds, (run_start, run_end, at) in zip(result.spans, durations, runs[:-1], strict=True):
        assert abs((end - start) - seconds) <= HOP / SR / 2
        assert start == pytest.approx((at + run_end - run_start) / SR)  # right after the kept run before it
        assert np.abs(result.audio[round(start * SR) : round(end * SR)]).max() > 0
    assert result.duration_rule == "given" and result.seed == 4


def test_spans_at_both_ends_and_a_quiet_recording(synth):
    quiet = voice(2.2, pitch=120.0, amplitude=0.01)  # raised to target_rms for sampling, scaled back after
    seconds = len(quiet) / SR
    result = synth.edit(
        quiet, TEXT, NEW_TEXT, [(0.0, 0.4), (2.0, seconds)], durations=[0.5, 0.7], sample_rate=SR, sampling=FAST, seed=1
    )
    first, last = round(2.0 * SR / HOP), round(seconds * SR / HOP)
    shift = round(0.5 * SR / HOP) - round(0.4 * SR / HOP)
    middle = slice(round(0.4 * SR / HOP) * HOP + FADE, first * HOP - FADE)
    moved = slice(middle.start + shift * HOP, middle.stop + shift * HOP)
    assert np.array_equal(result.audio[moved], quiet[middle])
    assert result.spans[0][0] == 0.0 and result.spans[1][1] == pytest.approx(len(result.audio) / SR)
    assert result.spans[1][1] - result.spans[1][0] == pytest.approx(round(0.7 * SR / HOP) * HOP / SR)
    assert last * HOP >= len(quiet)  # the recording ends inside the last frame's hop
    regenerated = result.audio[round(result.spans[1][0] * SR) :]
    assert 0 < np.sqrt(np.mean(regenerated.astype(np.float64) ** 2)) < 0.1  # brought back down from 0.1


def test_the_same_seed_gives_the_same_edit(synth, recording):
    def edit(seed):
        return synth.edit(recording, TEXT, NEW_TEXT, SPANS[:1], sample_rate=SR, sampling=FAST, seed=seed)

    first, again, other = edit(9), edit(9), edit(10)
    assert np.array_equal(first.audio, again.audio) and first.spans == again.spans
    assert not np.array_equal(first.audio, other.audio)
    drawn = synth.edit(recording, TEXT, NEW_TEXT, SPANS[:1], sample_rate=SR, sampling=FAST)
    assert isinstance(drawn.seed, int) and np.array_equal(edit(drawn.seed).audio, drawn.audio)


def test_speaking_rate_rule_without_durations(synth, recording):
    old, new = normalize_vietnamese(TEXT), normalize_vietnamese(NEW_TEXT)
    expected = rate_durations(SPANS, old, new, len(recording) / SR)
    extra = len(recording) / SR * (len(new.encode()) / len(old.encode()) - 1)
    assert expected == pytest.approx([0.4 + extra / 2, 0.4 + extra / 2])
    assert rate_durations(SPANS, "abcd", "ab", 2.0) == [0.1, 0.1]  # never shorter than MIN_SPAN_S
    plan = synth.plan_edit(recording, TEXT, NEW_TEXT, SPANS, sample_rate=SR, seed=1)
    assert plan.duration_rule == "speaking_rate"
    assert plan.new_frames == [round(d * SR / HOP) for d in expected]
    assert plan.item.keep.shape == (plan.item.cond.shape[0],) and int((~plan.item.keep).sum()) == sum(plan.new_frames)
    assert plan.item.text_ids == synth.vocab.encode(new)


def test_edit_mask_keeps_cond_frames_and_an_edit_row_batches_like_alone(synth, recording):
    plan = synth.plan_edit(recording, TEXT, NEW_TEXT, SPANS, sample_rate=SR, seed=2)
    item = plan.item
    result = synth.model.sample(
        cond=item.cond[None],
        text=torch.tensor([item.text_ids]),
        duration=item.total_frames,
        steps=2,
        seed=2,
        edit_mask=item.keep[None],
    )
    kept = F.pad(item.keep, (0, result.mel.shape[1] - len(item.keep)))
    assert torch.equal(result.mel[0][kept], item.cond[item.keep])
    assert not torch.equal(
        result.mel[0][~kept][: len(item.cond)], torch.zeros_like(result.mel[0][~kept][: len(item.cond)])
    )
    other = synth.plan(
        "Một câu ngắn thôi.", synth.prepare_reference(voice(1.0), "Xin chào", SR), SynthesisOptions(seed=5)
    )
    together = synth.generate([item, *other.items], FAST)
    alone = synth.generate([item], FAST) + synth.generate(other.items, FAST)
    for got, want in zip(together, alone, strict=True):
        assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-5


def test_bad_spans_and_durations_name_the_problem(synth, recording):
    cases = [
        ([], None, "spans is empty"),
        ([(0.9, 0.5)], None, r"spans\[0\].*0 <= start < end"),
        ([(-0.1, 0.5)], None, r"spans\[0\]"),
        ([(0.5, 3.0)], None, r"spans\[0\].*ends after the recording, which lasts 2.600 s"),
        ([(1.0, 1.5), (0.2, 0.4)], None, r"spans\[1\].*sorted"),
        ([(0.2, 0.8), (0.6, 1.0)], None, r"spans\[1\].*overlap"),
        ([(0.2, 0.4, 0.6)], None, r"spans\[0\].*pair"),
        ([(0.2, 0.4)], [1.0, 2.0], "durations has 2 entries for 1 spans"),
        ([(0.2, 0.4)], [0.0], r"durations\[0\]=0.0 must be > 0"),
    ]
    for spans, durations, message in cases:
        with pytest.raises(InvalidEditError, match=message):
            check_spans(spans, durations, len(recording) / SR)
    with pytest.raises(InvalidEditError, match="shorter than one mel frame"):
        synth.plan_edit(recording, TEXT, NEW_TEXT, [(0.5, 0.502)], sample_rate=SR)
    with pytest.raises(InvalidEditError, match="at most 60.0 s"):
        synth.plan_edit(recording, TEXT, NEW_TEXT, [(0.5, 0.9)], durations=[90.0], sample_rate=SR)
    with pytest.raises(InvalidOptionsError, match="target_rms=0"):
        synth.plan_edit(recording, TEXT, NEW_TEXT, SPANS, sample_rate=SR, target_rms=0)


def test_edit_cli(dit_fixture, vocoder_dir, recording, tmp_path, capsys):
    audio = tmp_path / "take.flac"
    sf.write(audio, recording, SR, subtype="PCM_24")
    out = tmp_path / "edited.wav"
    common = ["--model", str(dit_fixture / "model.safetensors"), "--vocab", str(dit_fixture / "vocab.txt")]
    common += ["--model-config", str(dit_fixture / "config.json"), "--vocoder", str(vocoder_dir)]
    common += ["--audio", str(audio), "--text", "xin chào các bạn", "--new-text", "xin chào mọi người"]
    args = [*common, "--span", "0.5", "0.9", "--duration", "0.6", "--out", str(out), "--nfe", "2", "--seed", "3"]
    args += ["--ode-method", "midpoint"]
    assert load_job("edit").main(args) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "seed 3" in summary and "duration rule given" in summary and str(out) in summary
    edited, rate = sf.read(out, dtype="float32")
    assert rate == SR and abs(len(edited) - len(recording) - round(0.6 * SR / HOP) * HOP + 0.4 * SR) < HOP
    bad = load_job("edit").main([*common, "--span", "0.9", "0.5", "--out", str(out)])
    assert bad == 2 and "spans[0]" in capsys.readouterr().err


# ---------------------------------------------------------------- ODE rules


def hand_velocity(model, x, cond, text, t, cfg):
    pred, null = model.transformer(x=x, cond=cond, text=text, time=t, cfg_infer=True).chunk(2, dim=0)
    return pred + (pred - null) * cfg


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_ode_rules_match_hand_computed_steps(synth, method):
    model = synth.model
    torch.manual_seed(0)
    cond = torch.randn(1, 12, 100)
    text = torch.tensor([[3, 4, 5, 6, 7]])
    n = 30
    result = model.sample(
        cond=cond,
        text=text,
        duration=n,
        steps=2,
        cfg_strength=2.0,
        sway_sampling_coef=None,
        use_epss=False,
        seed=8,
        ode_method=method,
    )
    step_cond = F.pad(cond, (0, 0, 0, n - 12))
    x = model.initial_noise(torch.tensor([n]), 8, torch.float32)
    grid = torch.linspace(0, 1, 3)
    with torch.no_grad():
        for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
            dt = t1 - t0
            if method == "euler":
                x = x + dt * hand_velocity(model, x, step_cond, text, t0, 2.0)
            else:
                middle = x + (dt / 2) * hand_velocity(model, x, step_cond, text, t0, 2.0)
                x = x + dt * hand_velocity(model, middle, step_cond, text, t0 + dt / 2, 2.0)
    expected = torch.where(lens_to_mask(torch.tensor([12]), n)[..., None], step_cond, x)
    assert torch.equal(result.mel, expected)


def test_midpoint_differs_from_euler_and_is_validated(synth):
    cond, text = torch.randn(1, 10, 100), torch.tensor([[3, 4, 5]])
    euler = synth.model.sample(cond=cond, text=text, duration=24, steps=2, seed=1)
    midpoint = synth.model.sample(cond=cond, text=text, duration=24, steps=2, seed=1, ode_method="midpoint")
    assert not torch.equal(euler.mel, midpoint.mel)
    with pytest.raises(InvalidOptionsError, match="ode_method='rk4'.*euler or midpoint"):
        SamplingSettings(ode_method="rk4")
    with pytest.raises(ValueError, match="ode_method='heun'"):
        synth.model.sample(cond=cond, text=text, duration=24, steps=2, ode_method="heun")


# ---------------------------------------------------------------- the other knobs


def test_cross_fade_duration_sets_the_overlap(synth):
    reference = synth.prepare_reference(voice(1.2), "Xin chào", SR)
    for seconds in (0.0, 0.05, 0.15):
        options = SynthesisOptions(sampling=FAST, seed=1, fix_duration=4.0, cross_fade_duration=seconds)
        plan = synth.plan(LONG_TEXT, reference, options)
        mels = synth.generate(plan.items, FAST)
        waves = synth.vocode(mels)
        assert len(waves) > 1
        assert len(synth.render(plan, mels).audio) == sum(len(w) for w in waves) - int(seconds * SR) * (len(waves) - 1)
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidOptionsError, match=f"cross_fade_duration={bad}"):
            SynthesisOptions(cross_fade_duration=bad)


def test_target_rms_raises_quiet_references_to_it(synth):
    quiet = voice(1.0, amplitude=0.02)
    for target in (0.05, 0.2):
        ref = synth.prepare_reference(quiet, "xin chào", SR, target_rms=target)
        rms = float(np.sqrt(np.mean(ref.audio.astype(np.float64) ** 2)))
        assert rms == pytest.approx(target, rel=1e-4) and ref.rms_scale < 1
    loud = synth.prepare_reference(voice(1.0, amplitude=0.8), "xin chào", SR, target_rms=0.05)
    assert loud.rms_scale == 1.0
    for bad in (0, -0.1, 1.5):
        with pytest.raises(InvalidOptionsError, match=f"target_rms={bad}"):
            synth.prepare_reference(quiet, "xin chào", SR, target_rms=bad)
    with pytest.raises(InvalidOptionsError, match="fix_duration=0"):
        SynthesisOptions(fix_duration=0)


def test_synthesize_cli_takes_the_knobs(dit_fixture, vocoder_dir, tmp_path, capsys):
    ref = tmp_path / "ref.wav"
    sf.write(ref, voice(1.0, amplitude=0.02), SR)
    common = ["--model", str(dit_fixture / "model.safetensors"), "--vocab", str(dit_fixture / "vocab.txt")]
    common += ["--model-config", str(dit_fixture / "config.json"), "--vocoder", str(vocoder_dir)]
    common += ["--ref-audio", str(ref), "--ref-text", "xin chào", "--text", "hôm nay trời đẹp quá.", "--nfe", "2"]
    out = tmp_path / "out.wav"
    knobs = ["--ode-method", "midpoint", "--target-rms", "0.2", "--cross-fade-duration", "0"]
    knobs += ["--fix-duration", "3", "--remove-silence", "--seed", "1"]
    assert load_job("synthesize").main([*common, "--out", str(out), *knobs]) == 0
    audio, _ = sf.read(out)
    assert "duration rule fixed" in capsys.readouterr().out and abs(len(audio) / SR - (3 - 1.05)) < 0.1
    assert load_job("synthesize").main([*common, "--out", str(out), "--cross-fade-duration", "5"]) == 2
    assert "cross_fade_duration=5.0" in capsys.readouterr().err
    assert load_job("synthesize").main([*common, "--out", str(out), "--target-rms", "2"]) == 2
    assert "target_rms=2.0" in capsys.readouterr().err
