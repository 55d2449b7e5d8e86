"""Comparing a model's output to a reference: valid frames only, and float32 rounding told from real mismatches.

A difference within ``tol`` passes. Some cases (random N(0, 0.3^2) weights, ODE sampling, average upsampling)
amplify float32 rounding far beyond 1e-4: the same package and torch on another CPU differ by up to ~6e-3
there, while the semantic mismatches these checks guard against are O(1). A difference over ``tol`` therefore
passes only within NOISE_FACTOR times that case's rounding floor: how far the output moves when every weight
is nudged by one float32 rounding unit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TOL = 1e-4
ULP = 2.0**-23  # float32's relative rounding unit
NOISE_TRIALS = 3
NOISE_FACTOR = 10


def max_diff_valid(ours: torch.Tensor, upstream: torch.Tensor, lens) -> float:
    """Largest |difference| over each item's first ``lens[i]`` frames."""
    assert ours.shape == upstream.shape, (ours.shape, upstream.shape)
    return max(float((ours[i, :n] - upstream[i, :n]).abs().max()) for i, n in enumerate(lens))


def rounding_floor(model, run: Callable[[], torch.Tensor], lens) -> float:
    """Largest move of ``run()``'s valid frames over NOISE_TRIALS seeded nudges of every weight by ~1 ULP."""
    base = run()
    saved = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    try:
        for _ in range(NOISE_TRIALS):
            with torch.no_grad():
                for p, s in zip(model.parameters(), saved, strict=True):
                    p.copy_(s * (1 + ULP * torch.randn(s.shape, generator=g)))
            worst = max(worst, max_diff_valid(run(), base, lens))
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved, strict=True):
                p.copy_(s)
    return worst


def assert_matches(model, run: Callable[[], torch.Tensor], upstream: torch.Tensor, lens, tol: float = TOL) -> None:
    """Within ``tol`` of the reference's valid frames, or else within NOISE_FACTOR times the case's rounding floor."""
    diff = max_diff_valid(run(), upstream, lens)
    if diff <= tol:
        return
    floor = rounding_floor(model, run, lens)
    assert diff <= NOISE_FACTOR * floor, f"{diff:.3g} > tol {tol} and > {NOISE_FACTOR} x rounding floor {floor:.3g}"
