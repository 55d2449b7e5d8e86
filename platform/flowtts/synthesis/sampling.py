"""The settings of one ``CFM.sample`` call: rows sampled together must share them.

Frozen and hashable: serving groups the rows of concurrent requests by it, the CLI builds it from its
flags, ``SynthesisOptions`` holds it and ``Synthesizer.generate`` takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowtts.model.cfm import ODE_METHODS
from flowtts.synthesis.errors import InvalidOptionsError


@dataclass(frozen=True)
class SamplingSettings:
    """ODE steps, classifier-free guidance, sway sampling, the EPSS time grid and the ODE rule (upstream
    defaults). ``midpoint`` evaluates the model twice per step, so it costs twice Euler's time at one ``nfe``."""

    nfe: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float | None = -1.0  # None: no sway
    use_epss: bool = True  # empirically pruned step sampling for 5-16 NFE
    ode_method: str = "euler"  # or "midpoint"

    def __post_init__(self) -> None:
        checks = [
            ("nfe", isinstance(self.nfe, int) and self.nfe >= 1, "an integer >= 1"),
            ("cfg_strength", self.cfg_strength >= 0, ">= 0"),
            ("ode_method", self.ode_method in ODE_METHODS, " or ".join(ODE_METHODS)),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidOptionsError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")
