"""Evaluate a registered model on held-out clips, log the report to MLflow, and promote it only if better.

The candidate is a ``flowtts.model_source.ModelSource``; give it pinned (``resolve_model_source``) so the
version scored is the version promoted. The rule is ``flowtts.evaluation.promotion.PromotionPolicy``: words
first (WER), then the voice (SIM-o), then the primary metric (MCD-DTW); the version that has the alias is
scored again with the same judges on the same items.

MLflow is imported inside the functions: ``import flowtts`` never pulls it in.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flowtts.checkpoint import ModelBundle
from flowtts.evaluation.heldout import (
    EvalItem,
    ItemScore,
    build_eval_items,
    score_model,
    score_other_sentence,
    summarise,
)
from flowtts.evaluation.judges import Judges
from flowtts.evaluation.promotion import Decision, PromotionPolicy, decide, measured
from flowtts.evaluation.report import write_report
from flowtts.model import build_model
from flowtts.model_loading import ModelConfigSpec, load_model
from flowtts.model_source import ModelSource, local_model, log_to_model_run, resolve_model_source
from flowtts.synthesis.vocoder import Vocoder
from flowtts.text import TextFrontend
from flowtts.text.frontend import INFO_KEY

logger = logging.getLogger(__name__)
PRIMARY_METRIC = PromotionPolicy.model_fields["primary_metric"].default


@dataclass
class EvalRun:
    """How an evaluation scored: the held-out items as the dataset holds them (before any model's text
    front end) and the settings, so that the gate scores the incumbent exactly so."""

    items: list[EvalItem]
    nfe: int
    seed: int
    backend: str
    judges: Judges | None


@dataclass
class Evaluation:
    summary: dict[str, float]
    scores: list[ItemScore]
    report: Path  # report.md; report.html and scores.json lie beside it
    run: EvalRun
    decision: Decision | None = None

    @property
    def html_report(self) -> Path:
        return self.report.parent / "report.html"


def evaluate(
    candidate: ModelSource,
    dataset: str | Path,  # a folder or a URI (flowtts.storage)
    *,
    max_items: int | None = None,
    nfe: int = 16,
    seed: int = 0,
    vocoder: str | Path | Vocoder | None = None,
    out_dir: Path | None = None,
    judges: Judges | None = None,
    vocab: str | Path | None = None,
    model_config: ModelConfigSpec | None = None,
    text_frontend: TextFrontend | None = None,
    backend: str = "eager",
) -> Evaluation:
    """Score the candidate and both baselines on the same held-out items (with the judged metrics too when
    ``judges`` are given); write the report. ``vocab``, ``model_config`` and ``text_frontend`` are the
    settings of an official checkpoint file (see ``flowtts.model_loading``). ``backend`` runs the sampling
    steps of every model scored (``flowtts.inference``). ``vocoder`` voices the report's audio: a Vocos folder
    or repo id, a loaded vocoder (the judges', say), or None for Griffin-Lim."""
    with local_model(candidate) as folder:
        bundle = load_model(candidate, folder, vocab=vocab, model_config=model_config, text_frontend=text_frontend)
    run = EvalRun(build_eval_items(dataset, max_items=max_items, seed=seed), nfe, seed, backend, judges)
    items = read_with(bundle, run.items)
    logger.info("evaluating %s on %d held-out items (NFE %d)", candidate.uri, len(items), nfe)
    scores, mels = score_with(run, bundle, items)
    untrained = replace(bundle, model=untrained_like(bundle, seed))
    scores += score_with(run, untrained, items, system="untrained")[0] + score_other_sentence(items, judges)
    summary = summarise(scores)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="flowtts-eval-"))
    report = write_report(out_dir, candidate.uri, summary, scores, items, mels, vocoder=vocoder)
    return Evaluation(summary=summary, scores=scores, report=report, run=run)


def score_with(run: EvalRun, bundle: ModelBundle, items: list[EvalItem], system: str = "model"):
    """``score_model`` with the run's settings and judges."""
    settings = {"nfe": run.nfe, "seed": run.seed, "judges": run.judges, "backend": run.backend}
    return score_model(system, bundle.model, bundle.vocab, items, **settings)


def read_with(bundle: ModelBundle, items: list[EvalItem]) -> list[EvalItem]:
    """The items' texts as the model reads them: through its text front end (the shards hold the
    dataset's front end output; a model that lowercases, for one, reads them lowercased)."""
    frontend = TextFrontend.model_validate(bundle.info[INFO_KEY])
    return [replace(item, text=frontend(item.text), ref_text=frontend(item.ref_text)) for item in items]


def untrained_like(bundle: ModelBundle, seed: int):
    torch.manual_seed(seed)
    return build_model(bundle.model.config).eval()


def log_to_mlflow(candidate: ModelSource, evaluation: Evaluation) -> None:
    """Metrics and the report folder go to the run that produced the model version."""
    metrics = {f"eval/{key}": value for key, value in evaluation.summary.items()}
    log_to_model_run(candidate, evaluation.report.parent, "evaluation", metrics=metrics)


def promote_if_better(
    candidate: ModelSource, evaluation: Evaluation, *, alias: str, policy: PromotionPolicy | None = None
) -> Decision:
    """Move ``alias`` to the candidate only when it passes ``policy`` (default ``PromotionPolicy()``) against
    the alias's current version, scored now with the evaluation's judges, items and settings. Tags the
    candidate with the decision, its basis and every number that decided, and the incumbent with the
    challenge (``challenged_by`` and the same numbers under ``challenge.``)."""
    if candidate.version is None:
        raise ValueError(f"--promote needs a registered model URI (models:/NAME@ALIAS), got {candidate.uri}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    policy = policy or PromotionPolicy()
    client = MlflowClient()
    try:
        current = client.get_model_version_by_alias(candidate.name, alias)
    except MlflowException:
        current = None
    values = measured(policy, evaluation.summary)
    if current is None:
        decision = Decision("promoted", f"no version had alias {alias!r}", candidate_values=values)
    elif str(current.version) == candidate.version:
        reason = f"version {candidate.version} already has alias {alias!r}"
        decision = Decision("unchanged", reason, candidate_values=values)
    else:
        incumbent = str(current.version)
        old = score_version(resolve_model_source(f"models:/{candidate.name}/{incumbent}"), evaluation.run)
        decision = decide(policy, evaluation.summary, old, incumbent_version=incumbent)
    logger.info("%s -> %s: %s (%s)", candidate.uri, alias, decision.decision, decision.reason)
    if decision.promoted:
        client.set_registered_model_alias(candidate.name, alias, candidate.version)
    tag_decision(client, candidate, alias, decision)
    evaluation.decision = decision
    return decision


def score_version(source: ModelSource, run: EvalRun) -> dict[str, float]:
    """The summary of another model version on the run's items, with its judges and settings."""
    with local_model(source) as folder:
        bundle = load_model(source, folder)
    return summarise(score_with(run, bundle, read_with(bundle, run.items))[0])


def tag_decision(client, candidate: ModelSource, alias: str, decision: Decision) -> None:
    """``promotion.<alias>.{decision,reason,basis,incumbent_version}`` and ``.candidate.<metric>`` /
    ``.incumbent.<metric>`` on the candidate; on the incumbent ``challenged_by`` and ``challenge.*``.
    Tags of an earlier decision that this one does not set are removed."""
    prefix = f"promotion.{alias}"
    tags = {f"{prefix}.decision": decision.decision, f"{prefix}.reason": decision.reason}
    if decision.basis is not None:
        tags[f"{prefix}.basis"] = decision.basis
    numbers = {f"candidate.{metric}": value for metric, value in decision.candidate_values.items()}
    numbers |= {f"incumbent.{metric}": value for metric, value in decision.incumbent_values.items()}
    tags |= {f"{prefix}.{key}": f"{value:.6g}" for key, value in numbers.items()}
    if decision.incumbent_version is not None:
        tags[f"{prefix}.incumbent_version"] = decision.incumbent_version
    owned = (f"{prefix}.basis", f"{prefix}.incumbent_version", f"{prefix}.candidate.", f"{prefix}.incumbent.")
    set_tags(client, candidate.name, candidate.version, tags, owned)
    if decision.incumbent_version is not None:
        challenge = {
            f"{prefix}.challenged_by": f"version {candidate.version}: {decision.decision} ({decision.reason})",
            f"{prefix}.challenge.candidate_version": candidate.version,
            f"{prefix}.challenge.decision": decision.decision,
        }
        challenge |= {f"{prefix}.challenge.{key}": f"{value:.6g}" for key, value in numbers.items()}
        set_tags(client, candidate.name, decision.incumbent_version, challenge, (f"{prefix}.challenge.",))


def set_tags(client, name: str, version: str, tags: dict[str, str], owned: tuple[str, ...]) -> None:
    """Set ``tags`` on a model version after deleting its tags that start with one of ``owned`` and are not
    among them (what an earlier decision wrote)."""
    for key in client.get_model_version(name, version).tags:
        if key.startswith(owned) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
