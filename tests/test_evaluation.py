"""Held-out evaluation and the promotion gate on an embedded (sqlite) MLflow registry: a briefly trained
model beats an untrained one, the gate promotes the better and refuses the worse, tags both versions,
decides on words first when an ASR judge runs, and the report (metrics, markdown, HTML, audio, pictures)
lands in the model version's MLflow run."""

from __future__ import annotations

import json
import random
from html import escape

import mlflow
import pytest
import torch

from flowtts.checkpoint import save_checkpoint
from flowtts.config import load_config
from flowtts.evaluation.gate import PRIMARY_METRIC, evaluate, log_to_mlflow, promote_if_better
from flowtts.evaluation.heldout import EvalItem, ItemScore
from flowtts.evaluation.judges import Judges
from flowtts.evaluation.promotion import PromotionPolicy
from flowtts.evaluation.report_html import ItemFiles, ItemView, render_html
from flowtts.model import build_model
from flowtts.model_source import resolve_model_source
from flowtts.synthesis import GriffinLimVocoder
from flowtts.training import TrainingData, build_recipe, collate, dataset_vocab, train_step
from tests.helpers import SAMPLE_CORPUS
from tests.helpers.models import small_model_config
from tests.helpers.registry import register_checkpoints
from tests.helpers.shards import write_dataset

MODEL = "flowtts-gate"
NFE = 4
TRAIN_UPDATES = 60
VOCODER = GriffinLimVocoder(n_iter=4)  # voices the report and the judge: nothing here listens closely


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
    evaluation = evaluate(candidate, dataset, nfe=NFE, out_dir=tmp_path / f"eval-v{version}", vocoder=VOCODER)
    policy = PromotionPolicy(primary_margin=margin)
    decision = promote_if_better(candidate, evaluation, alias="production", policy=policy)
    return candidate, evaluation, decision


class Hears:
    """An ASR judge whose transcript the test sets. The one judge double of the suite: no tiny model can
    be made to mishear the better model's speech and not the worse one's."""

    def __init__(self, transcript: str):
        self.transcript = transcript

    def transcribe(self, audio, sample_rate: int = 16000) -> str:
        return self.transcript


def tags(client, version: str) -> dict[str, str]:
    return client.get_model_version(MODEL, version).tags


def test_trained_model_beats_the_untrained_baseline_on_held_out_mcd(dataset, trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "checkpoint", dataset_vocab(dataset))
    source = resolve_model_source(str(folder))
    summary = evaluate(source, dataset, nfe=NFE, out_dir=tmp_path / "eval", vocoder=VOCODER).summary
    for mode in ("truth", "estimate"):
        assert summary[f"model/{mode}/mcd_dtw"] < summary[f"untrained/{mode}/mcd_dtw"] - 5, summary
    # the real recording of another sentence stays the bar: a 60-update model does not reach it
    assert summary["other_sentence/truth/mcd_dtw"] < summary["model/truth/mcd_dtw"], summary


def test_gate_promotes_a_better_candidate_refuses_a_worse_one_and_tags_both(dataset, registry, tmp_path):
    registry.set_registered_model_alias(MODEL, "production", "1")
    _, better, decision = gate(dataset, "2", tmp_path)
    assert decision.decision == "promoted", decision
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "2"
    candidate, incumbent = tags(registry, "2"), tags(registry, "1")
    assert candidate["promotion.production.decision"] == "promoted"
    # no ASR judge: the decision says it rested on MCD-DTW alone, and both versions carry its numbers
    assert candidate["promotion.production.basis"] == "mcd_dtw_only"
    assert f"decided on {PRIMARY_METRIC} alone" in candidate["promotion.production.reason"]
    assert float(candidate[f"promotion.production.candidate.{PRIMARY_METRIC}"]) == pytest.approx(
        better.summary[PRIMARY_METRIC], rel=1e-5
    )
    old = float(candidate[f"promotion.production.incumbent.{PRIMARY_METRIC}"])
    assert old > better.summary[PRIMARY_METRIC]
    assert float(incumbent[f"promotion.production.challenge.incumbent.{PRIMARY_METRIC}"]) == old
    assert incumbent["promotion.production.challenged_by"].startswith("version 2: promoted")

    _, worse, decision = gate(dataset, "3", tmp_path)
    assert decision.decision == "rejected", decision
    assert worse.summary[PRIMARY_METRIC] > better.summary[PRIMARY_METRIC]
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "2"
    assert tags(registry, "3")["promotion.production.decision"] == "rejected"
    assert tags(registry, "2")["promotion.production.challenged_by"].startswith("version 3: rejected")

    _, _, decision = gate(dataset, "2", tmp_path)
    assert decision.decision == "unchanged"


def test_gate_margin_refuses_a_gain_smaller_than_asked(dataset, registry, tmp_path):
    registry.set_registered_model_alias(MODEL, "production", "3")
    _, _, decision = gate(dataset, "2", tmp_path, margin=1000.0)
    assert decision.decision == "rejected" and " -1000)" in decision.reason, decision.reason
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "3"


def test_gate_refuses_a_candidate_whose_words_are_worse_though_its_mcd_is_better(dataset, registry, tmp_path):
    registry.set_registered_model_alias(MODEL, "production", "1")
    hears = Hears(" ".join(["x"] * 50))  # the candidate: 50 wrong words for every sentence
    judges = Judges(vocoder=VOCODER, asr=hears)
    candidate = resolve_model_source(f"models:/{MODEL}/2")
    evaluation = evaluate(candidate, dataset, nfe=NFE, out_dir=tmp_path / "words", judges=judges, vocoder=VOCODER)
    hears.transcript = ""  # the incumbent, scored by the gate: nothing at all, a WER of exactly 1
    decision = promote_if_better(candidate, evaluation, alias="production")

    assert decision.decision == "rejected" and decision.basis == "words_first", decision
    assert str(registry.get_model_version_by_alias(MODEL, "production").version) == "1"
    wer, prefix = "model/estimate/wer", "promotion.production"
    assert decision.reason.startswith(f"no speaker judge, similarity not checked: {wer}: candidate")
    assert PRIMARY_METRIC not in decision.reason  # only the failed check is named
    new, old = tags(registry, "2"), tags(registry, "1")
    assert new[f"{prefix}.decision"] == "rejected" and new[f"{prefix}.basis"] == "words_first"
    assert new[f"{prefix}.reason"] == decision.reason and new[f"{prefix}.incumbent_version"] == "1"
    assert float(new[f"{prefix}.candidate.{wer}"]) == pytest.approx(evaluation.summary[wer], rel=1e-5)
    assert evaluation.summary[wer] > 1.02
    assert float(new[f"{prefix}.incumbent.{wer}"]) == 1.0
    # it was better on MCD-DTW, and the numbers say so on both versions
    assert float(new[f"{prefix}.candidate.{PRIMARY_METRIC}"]) < float(new[f"{prefix}.incumbent.{PRIMARY_METRIC}"])
    assert old[f"{prefix}.challenged_by"] == f"version 2: rejected ({decision.reason})"
    for role in ("candidate", "incumbent"):
        for metric in (wer, PRIMARY_METRIC):
            assert old[f"{prefix}.challenge.{role}.{metric}"] == new[f"{prefix}.{role}.{metric}"]

    # report.html: worst first by WER (50 words heard: the shortest sentence is the worst), then by MCD-DTW
    html = evaluation.html_report.read_text(encoding="utf-8")
    items = [s for s in evaluation.scores if s.system == "model" and s.duration_mode == "estimate"]
    order = sorted(items, key=lambda s: (s.reference_words, -s.mcd_dtw))
    assert [html.index(escape(s.audio_file)) for s in order] == sorted(html.index(escape(s.audio_file)) for s in order)
    assert "worst first by word error rate" in html and "heard: x x x" in html


def test_report_html_escapes_every_text():
    mel = torch.zeros(10, 100)
    item = EvalItem("<a>.wav", "<spk>", "<script>alert(1)</script> & co", mel, "p&q.wav", "ref", mel)
    score = ItemScore("model", "estimate", "<a>.wav", 1.0, 0.1, 0.0, 10, 10, transcript="<u>heard</u>")
    view = ItemView(item, score, score, ItemFiles('p".wav', "r.wav", "g.wav", "m.png"))
    html = render_html("models:/<x>/1", (["system"], [["<model>"]]), [view])
    assert "<script>" not in html and "<u>" not in html and "<model>" not in html and 'p".wav' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html and "heard: &lt;u&gt;heard&lt;/u&gt;" in html
    assert "models:/&lt;x&gt;/1" in html and "p&amp;q.wav" in html and "http" not in html


def test_report_and_metrics_are_logged_to_the_model_versions_run(dataset, registry, tmp_path):
    candidate = resolve_model_source(f"models:/{MODEL}/2")
    evaluation = evaluate(candidate, dataset, nfe=NFE, out_dir=tmp_path / "report", vocoder=VOCODER)
    log_to_mlflow(candidate, evaluation)

    run = registry.get_run(candidate.run_id)
    for system in ("model", "untrained", "other_sentence"):
        assert run.data.metrics[f"eval/{system}/truth/mcd_dtw"] == pytest.approx(
            evaluation.summary[f"{system}/truth/mcd_dtw"]
        )
    logged = {a.path for a in registry.list_artifacts(candidate.run_id, "evaluation")}
    media = [f"item0{i}{end}" for i in range(2) for end in (".wav", "-prompt.wav", "-recording.wav", ".png")]
    names = ["report.html", "report.md", "scores.json", *media]
    assert {f"evaluation/{name}" for name in names} <= logged
    page = mlflow.artifacts.download_artifacts(
        run_id=candidate.run_id, artifact_path="evaluation/report.html", dst_path=str(tmp_path / "html")
    )
    html = open(page, encoding="utf-8").read()
    # every item, worst first by MCD-DTW (no ASR judge), with its players and picture beside the page
    items = [s for s in evaluation.scores if s.system == "model" and s.duration_mode == "estimate"]
    positions = [html.index(escape(s.audio_file)) for s in sorted(items, key=lambda s: -s.mcd_dtw)]
    assert positions == sorted(positions) and len(items) == 2 and "worst first by MCD-DTW" in html
    assert all(f'src="{name}"' in html for name in media)
    local = mlflow.artifacts.download_artifacts(
        run_id=candidate.run_id, artifact_path="evaluation/scores.json", dst_path=str(tmp_path / "download")
    )
    scores = json.loads(open(local).read())
    assert len(scores["items"]) == 2 * 5  # 2 held-out clips x (2 models x 2 duration modes + 1 baseline)
    report = (evaluation.report).read_text()
    assert "| model | truth |" in report and "| other_sentence | truth |" in report
