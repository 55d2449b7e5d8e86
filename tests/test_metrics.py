"""Objective metrics: MCD-DTW, DTW itself, aligned mel L1, duration error, MAPE, word error rate."""

from __future__ import annotations

import time
import unicodedata

import numpy as np
import pytest
import torch

from flowtts.evaluation import (
    ErrorCounts,
    MelMetrics,
    character_error_rate,
    compare_mels,
    dtw_path,
    duration_error,
    error_counts,
    mape,
    mcd_dtw,
    mel_cepstrum,
    mel_l1,
    sum_error_counts,
    word_error_rate,
)

N_MELS = 100


def _gaussian_kernel(sigma: float) -> np.ndarray:
    x = np.arange(-int(4 * sigma), int(4 * sigma) + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth_mel(frames: int, seed: int, sigma_t: float = 3.0, sigma_f: float = 2.0) -> np.ndarray:
    """A speech-feature-like log-mel ``[frames, 100]``: white noise low-passed with a Gaussian along time
    (``sigma_t`` frames, ~32 ms) and along mel (``sigma_f`` bins), scaled to 1 nat per bin, on a spectral
    tilt. Stationary, so two unrelated draws differ by a bounded amount (unlike a random walk)."""
    rng = np.random.default_rng(seed)
    kt, kf = _gaussian_kernel(sigma_t), _gaussian_kernel(sigma_f)
    noise = rng.normal(size=(frames + kt.size - 1, N_MELS + kf.size - 1))
    smooth = np.apply_along_axis(lambda col: np.convolve(col, kt, mode="valid"), 0, noise)
    smooth = np.apply_along_axis(lambda row: np.convolve(row, kf, mode="valid"), 1, smooth)
    smooth /= smooth.std()
    tilt = np.linspace(-2.0, -8.0, N_MELS)[None, :]
    return (tilt + smooth).astype(np.float32)


def stretch(mel: np.ndarray, factor: float) -> np.ndarray:
    """Linear interpolation along time to ``round(factor * frames)`` frames."""
    frames = mel.shape[0]
    new = int(round(frames * factor))
    src = np.linspace(0.0, frames - 1, new)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, frames - 1)
    w = (src - lo)[:, None]
    return ((1.0 - w) * mel[lo] + w * mel[hi]).astype(np.float32)


def brute_force_dtw_cost(cost: np.ndarray) -> float:
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    return float(acc[n, m])


# --------------------------------------------------------------------------------------- identity


def test_identical_inputs_give_exactly_zero():
    mel = smooth_mel(300, seed=0)
    assert mcd_dtw(mel, mel) == 0.0
    assert mel_l1(mel, mel) == 0.0
    assert mel_l1(mel, mel, align=False) == 0.0
    assert compare_mels(mel, mel) == MelMetrics(mcd_dtw=0.0, mel_l1=0.0, duration_error=0.0)


def test_torch_and_numpy_inputs_agree():
    ref = smooth_mel(120, seed=1)
    gen = smooth_mel(140, seed=2)
    from_np = compare_mels(ref, gen)
    from_torch = compare_mels(torch.from_numpy(ref), torch.from_numpy(gen))
    assert from_torch.mcd_dtw == pytest.approx(from_np.mcd_dtw, rel=1e-12)
    assert from_torch.mel_l1 == pytest.approx(from_np.mel_l1, rel=1e-12)
    assert from_torch.duration_error == from_np.duration_error


# --------------------------------------------------------------------------------------- MCD-DTW


def test_repeating_every_fourth_frame_is_zero_after_alignment():
    ref = smooth_mel(400, seed=3)
    gen = np.repeat(ref, [2 if i % 4 == 3 else 1 for i in range(ref.shape[0])], axis=0)
    assert gen.shape[0] == 500
    assert mcd_dtw(ref, gen) < 1e-9
    assert mel_l1(ref, gen) < 1e-9


def test_time_stretch_is_small_and_unrelated_is_large():
    ref = smooth_mel(400, seed=4)
    stretched = stretch(ref, 1.2)
    assert stretched.shape[0] == 480
    unrelated = smooth_mel(480, seed=5)

    # DTW pairs each interpolated frame with a whole reference frame, so a 1.2x stretch leaves a residual
    # of up to half a frame step: ~2.9 dB here (1 nat per bin, 32 ms smoothing), against ~64 dB for an
    # unrelated draw of the same statistics.
    close = mcd_dtw(ref, stretched)
    far = mcd_dtw(ref, unrelated)
    assert 0.0 < close < 4.0, close
    assert far > 15.0 * close, (close, far)
    assert mel_l1(ref, stretched) < 0.1 * mel_l1(ref, unrelated)


def test_mel_l1_aligns_equal_lengths_too():
    # A same-length rendition that runs 10 frames late: frame-by-frame L1 counts the shift as error, the
    # aligned L1 (the default, as for renditions of another length) only the ends DTW cannot match.
    ref = smooth_mel(300, seed=17)
    late = np.concatenate([np.repeat(ref[:1], 10, axis=0), ref[:-10]])
    aligned, frame_by_frame = mel_l1(ref, late), mel_l1(ref, late, align=False)
    assert aligned < 0.1 * frame_by_frame, (aligned, frame_by_frame)
    with pytest.raises(ValueError, match="equal lengths"):
        mel_l1(ref, late[:-1], align=False)


def test_mcd_grows_with_the_distortion():
    ref = smooth_mel(300, seed=15)
    rng = np.random.default_rng(16)
    noise = rng.normal(size=ref.shape).astype(np.float32)
    values = [mcd_dtw(ref, ref + scale * noise) for scale in (0.01, 0.1, 1.0)]
    assert values[0] < values[1] < values[2], values


def test_mcd_is_roughly_symmetric():
    a = smooth_mel(250, seed=6)
    b = smooth_mel(310, seed=7)
    ab, ba = mcd_dtw(a, b), mcd_dtw(b, a)
    assert ab > 0 and ba > 0
    assert ab == pytest.approx(ba, rel=0.05)


def test_mcd_is_invariant_to_a_constant_log_gain():
    # c0 is dropped, so a constant offset (pure loudness change) costs nothing.
    ref = smooth_mel(200, seed=8).astype(np.float64)
    assert mcd_dtw(ref, ref + 1.5) == pytest.approx(0.0, abs=1e-9)


def test_mcd_matches_hand_formula_for_equal_frames():
    # With one frame each, the path is the single pair: MCD = 10/ln10 * sqrt(2) * ||c_ref - c_gen||.
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(1, N_MELS))
    gen = rng.normal(size=(1, N_MELS))
    diff = mel_cepstrum(ref) - mel_cepstrum(gen)
    expected = 10.0 / np.log(10.0) * np.sqrt(2.0) * np.sqrt((diff**2).sum())
    assert mcd_dtw(ref, gen) == pytest.approx(expected, rel=1e-12)


def test_mcd_dtw_1500_frames_is_fast():
    ref = smooth_mel(1500, seed=10)
    gen = smooth_mel(1500, seed=11)
    mcd_dtw(ref, gen)  # warm-up (torch / caches)
    start = time.perf_counter()
    value = mcd_dtw(ref, gen)
    elapsed = time.perf_counter() - start
    assert np.isfinite(value) and value > 0
    assert elapsed < 2.0, f"mcd_dtw on 1500x1500 took {elapsed:.3f}s"


# --------------------------------------------------------------------------------------- mel cepstrum


def test_mel_cepstrum_shape_and_dct_properties():
    mel = smooth_mel(50, seed=12)
    cep = mel_cepstrum(mel, order=13)
    assert cep.shape == (50, 13)
    assert cep.dtype == np.float64
    # A flat spectrum has energy only in c0, which is dropped.
    assert np.allclose(mel_cepstrum(np.full((3, N_MELS), -4.0)), 0.0, atol=1e-12)
    # Orthonormal: using every coefficient 1..n-1 keeps the energy of the mean-removed frame.
    full = mel_cepstrum(mel, order=N_MELS - 1)
    mel64 = mel.astype(np.float64)
    centred = mel64 - mel64.mean(axis=1, keepdims=True)
    assert np.allclose((full**2).sum(axis=1), (centred**2).sum(axis=1), rtol=1e-9)


@pytest.mark.parametrize("order", [0, N_MELS])
def test_mel_cepstrum_rejects_bad_order(order):
    with pytest.raises(ValueError, match="order"):
        mel_cepstrum(np.zeros((4, N_MELS)), order=order)


# --------------------------------------------------------------------------------------- DTW


def _assert_valid_path(pi: np.ndarray, pj: np.ndarray, n: int, m: int) -> None:
    assert pi.shape == pj.shape
    assert (pi[0], pj[0]) == (0, 0)
    assert (pi[-1], pj[-1]) == (n - 1, m - 1)
    di, dj = np.diff(pi), np.diff(pj)
    steps = set(zip(di.tolist(), dj.tolist(), strict=True))
    assert steps <= {(1, 0), (0, 1), (1, 1)}, steps


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (9, 13), (20, 11), (37, 37)])
def test_dtw_path_is_valid_and_optimal(shape):
    rng = np.random.default_rng(sum(shape))
    cost = rng.random(shape)
    pi, pj = dtw_path(cost)
    _assert_valid_path(pi, pj, *shape)
    assert cost[pi, pj].sum() == pytest.approx(brute_force_dtw_cost(cost), rel=1e-12)


def test_dtw_path_on_zero_diagonal_is_the_diagonal():
    cost = np.ones((10, 10)) - np.eye(10)
    pi, pj = dtw_path(cost)
    assert pi.tolist() == list(range(10))
    assert pj.tolist() == list(range(10))


def test_dtw_path_1500_is_valid():
    rng = np.random.default_rng(13)
    cost = rng.random((1500, 1400))
    pi, pj = dtw_path(cost)
    _assert_valid_path(pi, pj, 1500, 1400)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 3)), np.zeros((2, 2, 2)), np.array([[np.nan]])])
def test_dtw_path_rejects_bad_cost(bad):
    with pytest.raises(ValueError):
        dtw_path(bad)


# --------------------------------------------------------------------------------------- mel L1


def test_mel_l1_known_value_and_mismatch():
    ref = np.zeros((4, N_MELS))
    gen = np.full((4, N_MELS), 0.25)
    assert mel_l1(ref, gen, align=False) == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"4 frames.*5 frames"):
        mel_l1(ref, np.zeros((5, N_MELS)), align=False)
    # With alignment, a length mismatch is fine.
    assert mel_l1(ref, np.zeros((5, N_MELS)), align=True) == 0.0


# --------------------------------------------------------------------------------------- duration / MAPE


def test_duration_error():
    assert duration_error(100, 100) == 0.0
    assert duration_error(100, 120) == pytest.approx(0.2)
    assert duration_error(100, 80) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        duration_error(0, 10)
    with pytest.raises(ValueError):
        duration_error(10, -1)


def test_compare_mels_duration_field():
    ref = smooth_mel(200, seed=14)
    gen = stretch(ref, 1.2)
    metrics = compare_mels(ref, gen)
    assert metrics.duration_error == pytest.approx(0.2)
    assert 0.0 < metrics.mcd_dtw < 4.0
    assert 0.0 < metrics.mel_l1 < 0.1


def test_mape_known_values():
    # |110-100|/100 = 10 %, |45-50|/50 = 10 %, |-3 - -2|/2 = 50 % -> mean 23.33 %
    assert mape([110, 45, -3], [100, 50, -2]) == pytest.approx(70.0 / 3.0)
    assert mape(np.array([1.0, 2.0]), (1.0, 2.0)) == 0.0
    with pytest.raises(ValueError):
        mape([1, 2], [1])
    with pytest.raises(ValueError):
        mape([], [])
    with pytest.raises(ValueError):
        mape([1.0], [0.0])


# --------------------------------------------------------------------------------------- bad shapes


@pytest.mark.parametrize(
    ("ref", "gen", "pattern"),
    [
        (np.zeros(100), np.zeros((5, N_MELS)), r"\(100,\)"),
        (np.zeros((2, 5, N_MELS)), np.zeros((5, N_MELS)), r"\(2, 5, 100\)"),
        (np.zeros((0, N_MELS)), np.zeros((5, N_MELS)), r"\(0, 100\)"),
        (np.zeros((5, N_MELS)), np.zeros((5, 80)), r"\(5, 100\).*\(5, 80\)"),
        (np.zeros((5, N_MELS)), np.full((5, N_MELS), np.nan), "NaN"),
    ],
)
def test_bad_shapes_raise(ref, gen, pattern):
    for fn in (mcd_dtw, mel_l1, compare_mels):
        with pytest.raises(ValueError, match=pattern):
            fn(ref, gen)
    with pytest.raises(ValueError, match=r"\(3, 4, 5\)"):
        mel_cepstrum(np.zeros((3, 4, 5)))


# --------------------------------------------------------------------------------------- word error rate


def test_word_error_rate_counts_edits_per_reference_word():
    assert word_error_rate("Xin chào, Việt Nam!", "xin chào việt nam") == 0.0  # case and punctuation ignored
    assert word_error_rate("một hai ba bốn", "một hai bốn") == 0.25  # one deletion
    assert word_error_rate("một hai ba bốn", "một hai bảy bốn") == 0.25  # one substitution
    assert word_error_rate("một hai", "không một hai ba") == 1.0  # two insertions
    assert word_error_rate("một", "") == 1.0
    # NFC and NFD spellings of the same word are the same word
    assert word_error_rate("Việt", unicodedata.normalize("NFD", "Việt")) == 0.0
    with pytest.raises(ValueError, match="at least one word"):
        word_error_rate(" ... ", "một")


def test_error_counts_split_skipped_repeated_and_wrong_words():
    skipped = error_counts("một hai ba bốn", "một bốn")
    assert (skipped.substitutions, skipped.deletions, skipped.insertions) == (0, 2, 0)
    repeated = error_counts("một hai ba", "một hai hai ba ba")
    assert (repeated.substitutions, repeated.deletions, repeated.insertions) == (0, 0, 2)
    # a wrong word is one substitution, not a deletion plus an insertion
    wrong = error_counts("một hai ba", "một bảy ba")
    assert (wrong.substitutions, wrong.deletions, wrong.insertions, wrong.reference_length) == (1, 0, 0, 3)
    mixed = error_counts("xin chào việt nam", "chào chào việt nem")
    assert (mixed.substitutions, mixed.errors, mixed.rate) == (2, 2, 0.5)  # xin -> chào, nam -> nem
    assert mixed.errors == round(word_error_rate("xin chào việt nam", "chào chào việt nem") * 4)
    # characters of the words, spaces and punctuation left out: "chào" -> "chao" is one substitution
    assert error_counts("Xin chào!", "xin chao", unit="char") == ErrorCounts(1, 0, 0, 7)
    assert character_error_rate("abc", "abcabc") == 1.0
    with pytest.raises(ValueError, match="unit must be one of"):
        error_counts("a", "a", unit="phone")


def test_overall_error_rate_sums_the_edits_of_every_item():
    short = error_counts("một", "hai")  # 1 substitution of 1 word
    long = error_counts("một hai ba bốn năm sáu bảy tám chín", "một hai ba bốn năm sáu bảy tám chín mười")
    total = sum_error_counts([short, long])
    assert total == ErrorCounts(substitutions=1, deletions=0, insertions=1, reference_length=10)
    assert total.rate == 0.2 != (short.rate + long.rate) / 2  # not a mean of per-item rates
    with pytest.raises(ValueError, match="at least one"):
        sum_error_counts([])
