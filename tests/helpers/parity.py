"""Comparing a model's output to a reference: valid frames only, float32 rounding told from real mismatches.

A difference within ``TOL`` (1e-4) passes. Beyond it a case passes only within ``NOISE_FACTOR`` times a rounding
floor (how far the output moves when every weight is nudged by one float32 rounding unit), never beyond
``FLOOR_CAP``: random N(0, 0.3^2) weights, and an ODE over several steps, amplify rounding (upstream's own
sampling moves by up to 8.5e-3 on ``dit-v1-avgupsample``), while the mismatches these checks guard against are
O(1). For upstream's whole sampling calls the floor is measured by the generator on upstream's model and
recorded in the fixture. Forward passes and losses have no recorded floor: the fixtures match bit for bit on
the CPU that wrote them, but another CPU's kernels (another EPYC, other SIMD paths in MKL) move
``dit-v1-avgupsample``'s single forward pass by 1.2e-3; there the floor is measured on our model with the
upstream weights (``assert_forward_close``), which a real mismatch does not hide in.
A backend (compiled, ONNX Runtime) held to eager is a different graph of the same float32 arithmetic, so its
floor is measured on eager (the reference there), never on the code under test, and capped at
``BACKEND_FLOOR_CAP``: on ``dit-v1-avgupsample`` eager's own sampling moves by 2.3e-2 under a 1-ULP nudge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TOL = 1e-4
ULP = 2.0**-23  # float32's relative rounding unit
NOISE_TRIALS = 3
NOISE_FACTOR = 10
FLOOR_CAP = 1e-2
BACKEND_FLOOR_CAP = 1e-1


def max_diff_valid(ours: torch.Tensor, reference: torch.Tensor, lens) -> float:
    """Largest |difference| over each item's first ``lens[i]`` frames."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return max(float((ours[i, :n] - reference[i, :n]).abs().max()) for i, n in enumerate(lens))


def allowance(tol: float, floor: float, cap: float = FLOOR_CAP) -> float:
    """What a sampling case may differ by: ``tol``, or NOISE_FACTOR x the reference's floor up to ``cap``."""
    return max(tol, min(NOISE_FACTOR * floor, cap))


def assert_close(
    ours: torch.Tensor, reference: torch.Tensor, lens, tol: float = TOL, floor: float = 0.0, cap: float = FLOOR_CAP
) -> None:
    diff = max_diff_valid(ours, reference, lens)
    allowed = allowance(tol, floor, cap)
    assert diff <= allowed, f"max |diff| {diff:.3g} > {allowed:.3g} (tol {tol:g}, reference rounding floor {floor:.3g})"


def assert_forward_close(
    model, run: Callable[[], torch.Tensor], reference: torch.Tensor, lens, tol: float = TOL
) -> None:
    """A forward pass or loss of ``model`` against upstream's output: within ``tol``, or else within
    NOISE_FACTOR x the rounding floor of ``run`` measured on ``model``, up to FLOOR_CAP."""
    ours = run()
    if max_diff_valid(ours, reference, lens) <= tol:
        return
    assert_close(ours, reference, lens, tol, rounding_floor(model, run, lens))


def rounding_floor(reference_model, run: Callable[[], torch.Tensor], lens) -> float:
    """Largest move of ``run()``'s valid frames over NOISE_TRIALS seeded nudges of every weight of the
    *reference* model by ~1 ULP (weights restored afterwards)."""
    base = run()
    saved = [p.detach().clone() for p in reference_model.parameters()]
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    try:
        for _ in range(NOISE_TRIALS):
            with torch.no_grad():
                for p, s in zip(reference_model.parameters(), saved, strict=True):
                    p.copy_(s * (1 + ULP * torch.randn(s.shape, generator=g)))
            worst = max(worst, max_diff_valid(run(), base, lens))
    finally:
        with torch.no_grad():
            for p, s in zip(reference_model.parameters(), saved, strict=True):
                p.copy_(s)
    return worst


def assert_matches_eager(model, run_eager: Callable[[], torch.Tensor], ours: torch.Tensor, lens, tol: float) -> None:
    """A backend's output against eager's (``run_eager``): within ``tol``, or else within NOISE_FACTOR x eager's
    own rounding floor, up to BACKEND_FLOOR_CAP."""
    reference = run_eager()
    if max_diff_valid(ours, reference, lens) <= tol:
        return
    assert_close(ours, reference, lens, tol, rounding_floor(model, run_eager, lens), BACKEND_FLOOR_CAP)
