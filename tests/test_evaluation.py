"""Held-out evaluation and the promotion gate on an embedded (sqlite) MLflow registry: a briefly trained
model beats an untrained one, the gate promotes the better and refuses the worse, tags both versions,
and the report (metrics, markdown, audio, pictures) lands in the model version's MLflow run."""

from __future__ import annotations

import json
import random

import mlflow
import pytest
import torch

from flowtts.checkpoint import save_checkpoint
from flowtts.config import load_config
from flowtts.evaluation.gate import PRIMARY_METRIC, evaluate, log_to_mlflow, promote_if_better
from flowtts.model import build_model
from flowtts.model_source import resolve_model_source
from flowtts.training import TrainingData, build_recipe, collate, dataset_vocab, train_step
from tests.helpers import SAMPLE_CORPUS
from tests.helpers.models import small_model_config
from tests.helpers.registry import register_checkpoints
from tests.helpers.shards import write_dataset

MODEL = "flowtts-gate"
NFE = 4
TRAIN_UPDATES = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("gate-data"), SAMPLE_CORPUS, count=10, heldout=2)


def small_model(vocab_size: int, seed: int):
    torch.manual_seed(seed)
    return build_model(small_model_config(vocab_size))


def trained_model(dataset, updates: int):
    """The small model after ``updates`` AdamW updates on the training clips (first 200 frames of each)."""
    data = TrainingData.from_folder(dataset, dataset_vocab(dataset))
    model = small_model(len(data.vocab), seed=0)
    random.seed(0)  # the CFM's per-batch condition drops
    train = load_config("tiny").with_overrides({"train.num_warmup_updates": 5, "train.max_updates": updates}).train
    recipe = build_recipe(model, train)
    halves = [list(range(0, len(data), 2)), list(range(1, len(data), 2))]
    batches = [collate([data.mel(r)[:200] for r in rows], [data.token_ids(r) for r in rows], rows) for rows in halves]
    for update in range(updates):
        train_step(model, recipe, [batches[update % 2]], max_grad_norm=1.0, device=torch.device("cpu"))
    return model.eval()


@pytest.fixture(scope="module")
def trained(dataset):
    return trained_model(dataset, TRAIN_UPDATES)


@pytest.fixture(scope="module")
def registry(dataset, trained, tmp_path_factory):
    """Versions 1 and 3: untrained (two seeds); version 2: trained."""
    root = tmp_path_factory.mktemp("gate-registry")
    vocab = dataset_vocab(dataset)
    models = [small_model(len(vocab), seed=0), trained, small_model(len(vocab), seed=1)]
    folders = [save_checkpoint(m, root / f"v{i}" / "checkpoint", vocab) for i, m in enumerate(models, start=1)]
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        assert register_checkpoints(tracking_uri, root / "artifacts", folders, MODEL) == ["1", "2", "3"]
        yield mlflow.MlflowClient(tracking_uri, tracking_uri)


def gate(dataset, version: str, tmp_path, margin: float = 0.0):
    candidate = resolve_model_source(f"models:/{MODEL}/{version}")
    evaluation = evaluate(candidate, dataset, nfe=NFE, out_dir=tmp_path / f"eval-v{version}")
    decision = promote_if_better(candidate, evaluation, dataset, alias="production", margin=margin, nfe=NFE)
    return candidate, evaluation, decision


def tags(client, version: str) -> dict[str, str]:
    return client.get_model_version(MODEL, version).tags


def test_trained_model_beats_the_untrained_baseline_on_held_out_mcd(dataset, trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "checkpoint", dataset_vocab(dataset))
    summary = evaluate(resolve_model_source(str(folder)), dataset, nfe=NFE, out_dir=tmp_path / "eval").summary
    for mode in ("truth", "estimate"):
        assert summary[f"model/{mode}/mcd_dtw"] < summary[f"untrained/{mode}/mcd_dtw"] - 5, summary
    # the real recording of another sentence stays the bar: a 60-update model does not reach it
    assert summary["other_sentence/truth/mcd_dtw"] < summary["model/truth/mcd_dtw"], summary


def test_gate_promotes_a_better_candidate_refuses_a_worse_one_and_tags_both(dataset, registry, tmp_path):
    registry.set_registered_model_alias(MODEL, "production", "1")
    _, better, decision = gate(dataset, "2", tmp_path)
    assert decision["decision"] == "promoted", decision
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "2"
    assert tags(registry, "2")["promotion.production.decision"] == "promoted"
    assert tags(registry, "1")["promotion.production.challenged_by"].startswith("version 2: promoted")

    _, worse, decision = gate(dataset, "3", tmp_path)
    assert decision["decision"] == "rejected", decision
    assert worse.summary[PRIMARY_METRIC] > better.summary[PRIMARY_METRIC]
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "2"
    assert tags(registry, "3")["promotion.production.decision"] == "rejected"
    assert tags(registry, "2")["promotion.production.challenged_by"].startswith("version 3: rejected")

    _, _, decision = gate(dataset, "2", tmp_path)
    assert decision["decision"] == "unchanged"


def test_gate_margin_refuses_a_gain_smaller_than_asked(dataset, registry, tmp_path):
    registry.set_registered_model_alias(MODEL, "production", "3")
    _, _, decision = gate(dataset, "2", tmp_path, margin=1000.0)
    assert decision["decision"] == "rejected" and "margin 1000.0" in decision["reason"]
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "3"


def test_report_and_metrics_are_logged_to_the_model_versions_run(dataset, registry, tmp_path):
    candidate = resolve_model_source(f"models:/{MODEL}/2")
    evaluation = evaluate(candidate, dataset, nfe=NFE, out_dir=tmp_path / "report")
    log_to_mlflow(candidate, evaluation)

    run = registry.get_run(candidate.run_id)
    for system in ("model", "untrained", "other_sentence"):
        assert run.data.metrics[f"eval/{system}/truth/mcd_dtw"] == pytest.approx(
            evaluation.summary[f"{system}/truth/mcd_dtw"]
        )
    logged = {a.path for a in registry.list_artifacts(candidate.run_id, "evaluation")}
    assert {
        "evaluation/report.md",
        "evaluation/scores.json",
        "evaluation/item00.wav",
        "evaluation/item00.png",
    } <= logged
    local = mlflow.artifacts.download_artifacts(
        run_id=candidate.run_id, artifact_path="evaluation/scores.json", dst_path=str(tmp_path / "download")
    )
    scores = json.loads(open(local).read())
    assert len(scores["items"]) == 2 * 5  # 2 held-out clips x (2 models x 2 duration modes + 1 baseline)
    report = (evaluation.report).read_text()
    assert "| model | truth |" in report and "| other_sentence | truth |" in report
