"""The promotion policy and the decision it makes: words first, then the voice, then the primary metric.

Pure: two summaries in (the keys of ``flowtts.evaluation.heldout.summarise``, e.g. ``model/estimate/wer``),
a :class:`Decision` out. ``flowtts.evaluation.gate`` scores both versions and writes the decision as tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowtts.evaluation.heldout import DURATION_MODES

LOWER_IS_BETTER = ("mcd_dtw", "mel_l1", "duration_error", "wer", "cer")
WORD_METRICS = ("wer", "cer")
SIMILARITY_METRICS = ("sim_o", "speaker_sim")
TOLERANCE = 1e-9  # float noise: a value exactly at a limit passes


def _check_metric(value: str, allowed: tuple[str, ...]) -> str:
    system, _, rest = value.partition("/")
    mode, _, name = rest.partition("/")
    if system != "model" or mode not in DURATION_MODES or name not in allowed:
        raise ValueError(
            f"a metric of the candidate model/<{'|'.join(DURATION_MODES)}>/<{'|'.join(allowed)}>, got {value!r}"
        )
    return value


class PromotionPolicy(BaseModel):
    """When a candidate takes an alias from the version that has it. Both are scored at that moment with the
    same judges on the same held-out items; the candidate must pass, in this order:

    1. words: its ``wer_metric`` is at most the incumbent's plus ``max_wer_increase`` (absolute: 0.02 is two
       points of WER; Vietnamese words are syllables, so this is the syllable error rate);
    2. voice: its ``similarity_metric`` is at least the incumbent's minus ``max_similarity_drop`` (cosine);
    3. primary: its ``primary_metric`` (lower is better) is below the incumbent's by ``primary_margin`` or more.

    A check whose metric was not measured (no ASR judge, no speaker judge) is skipped, and the decision's
    ``basis`` says what it rested on. WER and similarity are read at the estimated duration by default:
    what serving says, with the model's own duration predictor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: str = Field("model/truth/mcd_dtw", description="lower is better; MCD-DTW in dB by default")
    primary_margin: float = Field(0.0, ge=0, description="how much lower the candidate must be on it")
    wer_metric: str = Field("model/estimate/wer", description="word (or character: .../cer) error rate")
    max_wer_increase: float = Field(0.02, ge=0, description="absolute increase of it the candidate may have")
    similarity_metric: str = Field("model/estimate/sim_o", description="SIM-o, or speaker_sim to the recording")
    max_similarity_drop: float = Field(0.02, ge=0, description="drop of it the candidate may have")

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, value: str) -> str:
        return _check_metric(value, LOWER_IS_BETTER)

    @field_validator("wer_metric")
    @classmethod
    def _words(cls, value: str) -> str:
        return _check_metric(value, WORD_METRICS)

    @field_validator("similarity_metric")
    @classmethod
    def _similarity(cls, value: str) -> str:
        return _check_metric(value, SIMILARITY_METRICS)

    @property
    def metrics(self) -> tuple[str, str, str]:
        return self.wer_metric, self.similarity_metric, self.primary_metric


@dataclass(frozen=True)
class Check:
    """One comparison that decided: both values, and the bound (the incumbent's value plus ``allowance``)
    the candidate had to meet."""

    name: str  # "words", "voice" or "primary"
    metric: str
    candidate: float
    incumbent: float
    allowance: float
    higher_is_better: bool = False

    @property
    def bound(self) -> float:
        return self.incumbent + self.allowance

    @property
    def passed(self) -> bool:
        if self.higher_is_better:
            return self.candidate >= self.bound - TOLERANCE
        return self.candidate <= self.bound + TOLERANCE

    def describe(self, incumbent_version: str) -> str:
        sign = ">=" if self.higher_is_better else "<="
        return (
            f"{self.metric}: candidate {self.candidate:.4f} vs version {incumbent_version} {self.incumbent:.4f} "
            f"(must be {sign} {self.bound:.4f} = {self.incumbent:.4f} {self.allowance + 0.0:+g})"
        )


@dataclass
class Decision:
    """What the gate decided and why. ``basis``: ``words_first`` (an ASR judge ran), else
    ``<primary>_and_similarity`` or ``<primary>_only`` (e.g. ``mcd_dtw_only``); None without a comparison."""

    decision: str  # "promoted", "rejected" or "unchanged"
    reason: str
    basis: str | None = None
    incumbent_version: str | None = None
    checks: list[Check] = field(default_factory=list)
    candidate_values: dict[str, float] = field(default_factory=dict)  # the policy's metrics, as measured

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    @property
    def incumbent_values(self) -> dict[str, float]:
        return {check.metric: check.incumbent for check in self.checks}


def decide(
    policy: PromotionPolicy, candidate: dict[str, float], incumbent: dict[str, float], *, incumbent_version: str
) -> Decision:
    """Apply ``policy`` to the candidate's and the incumbent's summaries (same judges, same items)."""
    for summary, who in ((candidate, "candidate"), (incumbent, f"version {incumbent_version}")):
        if policy.primary_metric not in summary:
            raise ValueError(f"{who} has no {policy.primary_metric!r}; measured: {sorted(summary)}")
    checks = []
    wer, sim, primary = policy.metrics
    if wer in candidate and wer in incumbent:
        checks.append(Check("words", wer, candidate[wer], incumbent[wer], policy.max_wer_increase))
    if sim in candidate and sim in incumbent:
        checks.append(Check("voice", sim, candidate[sim], incumbent[sim], -policy.max_similarity_drop, True))
    checks.append(Check("primary", primary, candidate[primary], incumbent[primary], -policy.primary_margin))

    short = primary.rsplit("/", 1)[1]
    names = {check.name for check in checks}
    if "words" in names:
        basis, preface = "words_first", "" if "voice" in names else "no speaker judge, similarity not checked: "
    elif "voice" in names:
        basis, preface = f"{short}_and_similarity", "no ASR judge, decided without words: "
    else:
        basis, preface = f"{short}_only", f"no ASR or speaker judge, decided on {primary} alone: "
    failed = [check for check in checks if not check.passed]
    shown = failed or checks
    return Decision(
        decision="rejected" if failed else "promoted",
        reason=preface + "; ".join(check.describe(incumbent_version) for check in shown),
        basis=basis,
        incumbent_version=incumbent_version,
        checks=checks,
        candidate_values=measured(policy, candidate),
    )


def measured(policy: PromotionPolicy, summary: dict[str, float]) -> dict[str, float]:
    """The policy's metrics present in a summary."""
    return {metric: summary[metric] for metric in policy.metrics if metric in summary}
