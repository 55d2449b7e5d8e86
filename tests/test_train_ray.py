"""Training end to end on real Ray Train (2 CPU workers, DDP over gloo), MLflow (embedded sqlite) and the
model registry: a run, and a worker failure with a restart from the last checkpoint. Training submitted
with ``ray job submit`` to a ``ray start --head`` cluster is tests/test_platform_e2e.py's (and the studio's)."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.config import DurationPredictorConfig, load_config
from flowtts.model import build_model
from flowtts.model_source import local_model, resolve_model_source
from flowtts.training import dataset_vocab, read_train_state
from tests.helpers import DEV_CORPUS, REPO, SAMPLE_CORPUS
from tests.helpers.shards import write_dataset
from trainer.duration_job import DurationJob, run_duration_training
from trainer.launch import TrainJob, run_training

pytestmark = pytest.mark.integration

TINY_OVERRIDES = {
    "train.batch_size_per_gpu": 1000,
    "train.max_samples": 4,
    "train.num_warmup_updates": 2,
    "train.log_samples_per_updates": 0,
}


CORPUS = DEV_CORPUS if DEV_CORPUS.exists() else SAMPLE_CORPUS


def corpus_entries(count: int) -> list[tuple[Path, str]]:
    with open(CORPUS / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="|", quoting=csv.QUOTE_NONE))[:count]
    return [(CORPUS / row["audio_file"], row["text"]) for row in rows]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train-data"), CORPUS, count=12, heldout=1)


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        yield
        return
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    yield
    ray.shutdown()


@pytest.fixture
def embedded_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def job(dataset: Path, storage: Path, name: str, max_steps: int, **changes) -> TrainJob:
    values = dict(
        config="tiny",
        data=dataset,
        storage=storage,
        name=name,
        workers=2,
        cpus_per_worker=0.5,
        max_steps=max_steps,
        checkpoint_every=2,
        log_every=1,
        sample_steps=4,
        max_failures=1,
        overrides=TINY_OVERRIDES,
        registered_model="flowtts-test",
    )
    return TrainJob(**{**values, **changes})


def test_the_cli_flags_are_the_train_job_fields(monkeypatch):
    import importlib.util

    monkeypatch.setenv("FLOWTTS_STORAGE", "/runs")
    spec = importlib.util.spec_from_file_location("train_job", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    given = ["--config", "tiny", "--data", "s3://b/ds", "--workers", "2", "--gpu", "--duration-predictor"]
    job = module.parse_args([*given, "--set", "train.learning_rate=0.0001", "--set", "train.max_samples=8"])
    assert job == TrainJob(
        config="tiny",
        data="s3://b/ds",
        workers=2,
        gpu=True,
        duration_predictor=True,
        overrides={"train.learning_rate": 0.0001, "train.max_samples": 8},
        storage=Path("/runs"),
    )
    assert job.max_steps is None and job.cpus_per_worker == 0.5 and job.log_every == 10
    with pytest.raises(SystemExit):
        module.parse_args(["--config", "tiny"])  # --data is required
    with pytest.raises(ValueError, match="extra"):
        TrainJob(config="tiny", data="d", batch_size=4)  # a misspelt option is refused, not ignored


def loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def test_run_tracks_checkpoints_registers_and_synthesises(dataset, tmp_path, local_ray, embedded_mlflow):
    """2 DDP workers training the CFM and a duration predictor together."""
    overrides = {**TINY_OVERRIDES, "train.log_samples_per_updates": 2, "model.duration_predictor": {"dim": 32}}
    outcome = run_training(job(dataset, tmp_path, "basic", max_steps=4, overrides=overrides))

    assert outcome.step == 4 and outcome.checkpoint.endswith("checkpoint_00000004")
    assert sorted(p.name for p in (tmp_path / "basic").glob("checkpoint_0*")) == [
        "checkpoint_00000002",
        "checkpoint_00000004",
    ]
    state = read_train_state(outcome.checkpoint)
    assert state.step == 4 and state.mlflow_run_id == outcome.mlflow_run_id
    assert {p.name for p in Path(outcome.checkpoint).glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}

    assert outcome.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.learning_rate"] == "0.001"
    assert loss_steps(client, outcome.mlflow_run_id) == [1, 2, 3, 4]
    for key in (
        "lr",
        "grad_norm",
        "frames_per_sec",
        "data_wait_share",
        "sample_mel_l1",
        "padding_waste",
        "duration_mape_byte_ratio",
        "duration_mape_predictor",
    ):
        assert key in run.data.metrics, key
    assert sorted(m.step for m in client.get_metric_history(outcome.mlflow_run_id, "duration_loss")) == [1, 2, 3, 4]
    samples = {a.path for a in client.list_artifacts(outcome.mlflow_run_id, "samples")}
    assert {
        "samples/step_0000002.wav",
        "samples/step_0000004.wav",
        "samples/step_0000004_mel.png",
        "samples/reference.wav",
    } <= samples

    registration = outcome.registration
    assert registration.model_uri == "models:/flowtts-test@candidate"
    version = client.get_model_version_by_alias("flowtts-test", "candidate")
    assert str(version.version) == registration.version and version.run_id == outcome.mlflow_run_id
    assert set(version.tags) >= {"config_hash", "data_manifest_fingerprint", "git_commit"}

    from flowtts.synthesis import SamplingSettings, SynthesisOptions, Synthesizer

    mlflow.set_tracking_uri(outcome.tracking_uri)
    synthesizer = Synthesizer.from_pretrained(registration.model_uri)
    assert synthesizer.model_info["step"] == 4 and synthesizer.model.duration_predictor is not None
    assert synthesizer.model_info["text_frontend"] == {"normalizer": "plain", "lowercase": False}  # the dataset's
    (ref_file, ref_text), (_, text) = corpus_entries(2)  # texts the trained vocab covers
    reference = synthesizer.prepare_reference(ref_file, ref_text)
    result = synthesizer.synthesize(text, reference, SynthesisOptions(sampling=SamplingSettings(nfe=2), seed=1))
    assert result.sample_rate == 24000 and result.audio.size > 2400 and abs(result.audio).max() > 0
    assert result.duration_rule == "predictor"


def test_duration_predictor_trains_alone_for_an_existing_model(dataset, tmp_path, local_ray, embedded_mlflow):
    """A model without a predictor (as an imported official one) gets one on Ray Train; the CFM is untouched."""
    vocab = dataset_vocab(dataset)
    config = load_config("tiny").model.with_vocab_size(len(vocab)).model_copy(update={"depth": 2})
    base = build_model(config)
    folder = save_checkpoint(base, tmp_path / "base", vocab, info={"step": 7})
    outcome = run_duration_training(
        DurationJob(
            model=str(folder),
            data=dataset,
            steps=30,
            batch_size=8,
            storage=tmp_path / "runs",
            name="dur",
            cpus_per_worker=0.5,
            registered_model="flowtts-dur",
            predictor=DurationPredictorConfig(dim=32),
        )
    )
    assert outcome.registration.model_uri == "models:/flowtts-dur@candidate"
    assert outcome.metrics["duration_mape_predictor"] >= 0 and outcome.metrics["duration_mape_byte_ratio"] > 0
    client = MlflowClient(outcome.tracking_uri)
    assert len(client.get_metric_history(outcome.mlflow_run_id, "duration_loss")) == 30
    version = client.get_model_version_by_alias("flowtts-dur", "candidate")
    assert version.tags["base_model"] == str(folder) and "duration_mape_predictor" in version.tags

    mlflow.set_tracking_uri(outcome.tracking_uri)
    with local_model(resolve_model_source("models:/flowtts-dur@candidate")) as folder:
        trained = load_bundle(folder)
    assert trained.model.duration_predictor is not None and trained.info["duration_predictor_steps"] == 30
    for key, value in base.state_dict().items():
        assert torch.equal(value, trained.model.state_dict()[key]), key
