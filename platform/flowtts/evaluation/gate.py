"""Evaluate a registered model on held-out clips, log the report to MLflow, and promote it only if better.

The candidate is a ``flowtts.model_source.ModelSource``; give it pinned (``resolve_model_source``) so the
version scored is the version promoted.

MLflow is imported inside the functions: ``import flowtts`` never pulls it in.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from flowtts.checkpoint import ModelBundle
from flowtts.evaluation.heldout import (
    EvalItem,
    ItemScore,
    as_rows,
    build_eval_items,
    score_model,
    score_other_sentence,
    summarise,
)
from flowtts.evaluation.judges import Judges
from flowtts.evaluation.report import write_report
from flowtts.model import build_model
from flowtts.model_loading import ModelConfigSpec, load_model
from flowtts.model_source import ModelSource, local_model, log_to_model_run, resolve_model_source
from flowtts.text import TextFrontend
from flowtts.text.frontend import INFO_KEY

logger = logging.getLogger(__name__)
PRIMARY_METRIC = "model/truth/mcd_dtw"


@dataclass
class Evaluation:
    summary: dict[str, float]
    scores: list[ItemScore]
    report: Path
    decision: dict[str, str] = field(default_factory=dict)


def evaluate(
    candidate: ModelSource,
    dataset: str | Path,  # a folder or a URI (flowtts.storage)
    *,
    max_items: int | None = None,
    nfe: int = 16,
    seed: int = 0,
    vocoder: str | None = None,
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
    steps of every model scored (``flowtts.inference``)."""
    with local_model(candidate) as folder:
        bundle = load_model(candidate, folder, vocab=vocab, model_config=model_config, text_frontend=text_frontend)
    items = read_with(bundle, build_eval_items(dataset, max_items=max_items, seed=seed))
    logger.info("evaluating %s on %d held-out items (NFE %d)", candidate.uri, len(items), nfe)
    run = {"nfe": nfe, "seed": seed, "judges": judges, "backend": backend}
    scores, mels = score_model("model", bundle.model, bundle.vocab, items, **run)
    untrained_scores, _ = score_model("untrained", untrained_like(bundle, seed), bundle.vocab, items, **run)
    scores += untrained_scores + score_other_sentence(items, judges)
    summary = summarise(scores)
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="flowtts-eval-"))
    report = write_report(out_dir, candidate.uri, summary, as_rows(scores), items, mels["truth"], vocoder=vocoder)
    return Evaluation(summary=summary, scores=scores, report=report)


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
    candidate: ModelSource,
    evaluation: Evaluation,
    dataset: str | Path,  # a folder or a URI (flowtts.storage)
    *,
    alias: str,
    margin: float = 0.0,
    metric: str = PRIMARY_METRIC,
    nfe: int = 16,
    seed: int = 0,
    max_items: int | None = None,
) -> dict[str, str]:
    """Move ``alias`` to the candidate only when it beats the alias's current version by ``margin`` on
    ``metric`` (lower is better), both scored on the same items now; tag both versions with the decision."""
    if candidate.version is None:
        raise ValueError(f"--promote needs a registered model URI (models:/NAME@ALIAS), got {candidate.uri}")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    new_value = evaluation.summary[metric]
    try:
        current = client.get_model_version_by_alias(candidate.name, alias)
    except MlflowException:
        current = None
    if current is None:
        decision = {"decision": "promoted", "reason": f"no version had alias {alias!r}"}
    elif str(current.version) == candidate.version:
        decision = {"decision": "unchanged", "reason": f"version {candidate.version} already has alias {alias!r}"}
    else:
        incumbent_source = resolve_model_source(f"models:/{candidate.name}/{current.version}")
        with local_model(incumbent_source) as folder:
            incumbent = load_model(incumbent_source, folder)
        items: list[EvalItem] = read_with(incumbent, build_eval_items(dataset, max_items=max_items, seed=seed))
        old_scores, _ = score_model("model", incumbent.model, incumbent.vocab, items, nfe=nfe, seed=seed)
        old_value = summarise(old_scores)[metric]
        better = new_value <= old_value - margin
        decision = {
            "decision": "promoted" if better else "rejected",
            "reason": f"{metric}: candidate {new_value:.3f} vs version {current.version} {old_value:.3f} "
            f"(margin {margin})",
        }
    if decision["decision"] == "promoted":
        client.set_registered_model_alias(candidate.name, alias, candidate.version)
    prefix = f"promotion.{alias}"
    client.set_model_version_tag(candidate.name, candidate.version, f"{prefix}.decision", decision["decision"])
    client.set_model_version_tag(candidate.name, candidate.version, f"{prefix}.reason", decision["reason"])
    if current is not None and str(current.version) != candidate.version:
        client.set_model_version_tag(
            candidate.name,
            str(current.version),
            f"{prefix}.challenged_by",
            f"version {candidate.version}: {decision['decision']} ({decision['reason']})",
        )
    evaluation.decision = decision
    return decision
