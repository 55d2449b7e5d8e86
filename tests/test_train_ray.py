"""Training end to end on real Ray Train (2 CPU workers, DDP over gloo), MLflow (sqlite) and the model
registry: a run on S3 data and storage (the loopback moto server), a duration predictor trained alone, and the
options that are refused before Ray starts. Training submitted with ``ray job submit`` to a ``ray start --head``
cluster is tests/test_platform_e2e.py's (and the studio's); across the nodes of an autoscaling cluster, with a
lost node and a killed driver, tests/test_cluster_autoscaling.py's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from flowtts.checkpoint import load_bundle, save_checkpoint
from flowtts.config import DurationPredictorConfig, load_config
from flowtts.model import build_model
from flowtts.model_source import local_model, resolve_model_source
from flowtts.storage import resolve
from flowtts.synthesis import VocoderError
from flowtts.text import Vocab
from flowtts.training import dataset_vocab, read_train_state
from tests.helpers import DEV_CORPUS, REPO, SAMPLE_CORPUS, load_job
from tests.helpers.locations import upload
from tests.helpers.registry import attempt_records
from tests.helpers.shards import copy_dataset, write_dataset
from trainer.duration_job import DurationJob, run_duration_training
from trainer.launch import TrainJob, prepare_run, run_training
from trainer.settings import INIT_DIR, RUN_INFO_FILE
from trainer.tracking import TrackingError, tracking_uri_for

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


@pytest.fixture
def embedded_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def job(dataset: str | Path, storage: str | Path, name: str, max_steps: int, **changes) -> TrainJob:
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


def test_a_vocoder_that_cannot_load_fails_before_anything_is_read_or_written(tmp_path):
    """A bad ``--vocoder`` would otherwise surface at the first sample or, with samples off, at registration,
    after the whole run."""
    (tmp_path / "vocos").mkdir()
    for bad, named in ((tmp_path / "vocos", "lacks config.yaml"), ("http://host/vocos", "'http://host/vocos'")):
        with pytest.raises(VocoderError, match=named):
            prepare_run(job(tmp_path / "no-data", tmp_path / "runs", "bad-vocoder", 1, vocoder=str(bad)))
    assert [p.name for p in tmp_path.iterdir()] == ["vocos"]  # no run folder, no MLflow store


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


def test_a_run_on_s3_warm_starts_tracks_checkpoints_registers_and_synthesises(
    dataset, tmp_path, ray_local, s3_bucket, monkeypatch
):
    """2 DDP workers training the CFM and a duration predictor together from a warm start, with ``--data
    s3://...`` and ``--storage s3://...`` (what ``cluster.yaml`` gives every node): checkpoints, the run's
    record and the warm-start weights are objects in the bucket and nothing is written to a local folder named
    ``s3:``. The workers get the AWS variables the way a user gives them to a job, in the Ray runtime environment
    (``ray_local``). A resubmission that resumes from the bucket: test_cluster_autoscaling, after a killed driver."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # a storage URI needs one (no sqlite on S3)
    data = copy_dataset(dataset, f"{s3_bucket}/datasets/demo")
    vocab = dataset_vocab(dataset)
    base = save_checkpoint(build_model(load_config("tiny").model.with_vocab_size(len(vocab))), tmp_path / "base", vocab)
    work = tmp_path / "cwd"  # the driver's working directory: a storage URI must not become a folder in it
    work.mkdir()
    monkeypatch.chdir(work)
    storage = f"{s3_bucket}/runs"
    overrides = {**TINY_OVERRIDES, "train.log_samples_per_updates": 2, "model.duration_predictor": {"dim": 32}}
    train_job = job(data, storage, "basic", max_steps=4, init_from=base, overrides=overrides)
    assert train_job.storage == storage and train_job.data == data
    outcome = run_training(train_job)

    assert outcome.step == 4 and outcome.checkpoint == f"{storage}/basic/checkpoint_00000004"
    assert outcome.tracking_uri == tracking_uri
    objects = {f.relative_to(resolve(storage)) for f in resolve(storage).files(recursive=True)}
    assert {name.split("/")[1] for name in objects if "/checkpoint_0" in f"/{name}"} == {
        "checkpoint_00000002",
        "checkpoint_00000004",
    }
    for step in (2, 4):
        assert {f"basic/checkpoint_{step:08d}/rng_rank{rank}.pt" for rank in (0, 1)} <= objects, objects
    assert any(name.startswith(f"basic/{INIT_DIR}/") for name in objects), objects  # the warm start
    run_info = json.loads(resolve(f"{storage}/basic/{RUN_INFO_FILE}").read_text())  # what a resubmission reads
    assert run_info["mlflow_run_id"] == outcome.mlflow_run_id
    with resolve(outcome.checkpoint).local_folder() as folder:  # a download, removed afterwards
        state = read_train_state(folder)
    assert not Path(folder).exists()
    assert state.step == 4 and state.mlflow_run_id == outcome.mlflow_run_id
    assert not [p for p in tmp_path.rglob("s3:*")], "a storage URI was written as a local folder"

    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["job.data"] == data and run.data.params["job.storage"] == storage
    assert loss_steps(client, outcome.mlflow_run_id) == [1, 2, 3, 4]
    assert sorted(attempt_records(tracking_uri, outcome.mlflow_run_id)) == [0]
    for key in (
        "lr",
        "grad_norm",
        "frames_per_sec",
        "data_wait_share",
        "data_wait_share_mean",
        "peak_rss_mb",
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

    registration = outcome.registration  # from the checkpoint in the bucket
    assert registration.model_uri == "models:/flowtts-test@candidate" and registration.step == 4
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


def test_a_vocoder_in_s3_is_registered_with_the_model(tmp_path, s3_bucket, monkeypatch):
    """``--vocoder s3://...``: the registered model carries that Vocos folder, as it does a local one."""
    import yaml

    from flowtts.config import MelConfig
    from flowtts.pyfunc import VOCODER_ARTIFACT
    from flowtts.synthesis import init_vocos_folder
    from tests.helpers.models import small_model_config
    from trainer.registry import MODEL_NAME_IN_RUN, register_cfm

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # restored afterwards
    vocos = init_vocos_folder(tmp_path / "vocos", dim=32, intermediate_dim=64, num_layers=1)
    uri = upload(vocos, resolve(f"{s3_bucket}/vocos")).uri
    vocab = Vocab.from_texts(["xin chào"])
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking)
    experiment = client.create_experiment("vocoder", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    model = build_model(small_model_config(len(vocab), depth=1))
    registration = register_cfm(
        model,
        vocab,
        MelConfig(),
        {"step": 1},
        tracking_uri=tracking,
        run_id=run_id,
        registered_model="flowtts-vocoder",
        alias="candidate",
        tags={},
        vocoder=uri,
    )
    logged = Path(
        mlflow.artifacts.download_artifacts(
            f"runs:/{registration.run_id}/{MODEL_NAME_IN_RUN}", dst_path=str(tmp_path / "got"), tracking_uri=tracking
        )
    )
    artifacts = yaml.safe_load((logged / "MLmodel").read_text())["flavors"]["python_function"]["artifacts"]
    carried = logged / artifacts[VOCODER_ARTIFACT]["path"]
    assert {p.name: p.read_bytes() for p in carried.iterdir()} == {p.name: p.read_bytes() for p in vocos.iterdir()}


def test_duration_predictor_trains_alone_for_an_existing_model(dataset, tmp_path, ray_local, embedded_mlflow):
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


def test_a_storage_uri_without_a_tracking_server_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI"):
        tracking_uri_for("s3://bucket/runs")
    assert tracking_uri_for("runs") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # a folder: as before
    common = ["--data", "s3://bucket/ds", "--storage", "s3://bucket/runs"]
    for job, argv in (("train", ["--config", "tiny"]), ("train_duration", ["--model", "models:/flowtts@x"])):
        assert load_job(job).main([*argv, *common]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --storage s3://bucket/runs is not a local folder"), error
        assert "set MLFLOW_TRACKING_URI" in error and "Traceback" not in error
        with pytest.raises(SystemExit):
            load_job(job).main(["--help"])
        options = capsys.readouterr().out.split("options:", 1)[1]
        assert "a URI every node" in options.split("--storage STORAGE", 1)[1].split("\n  --", 1)[0]
    assert not list(tmp_path.iterdir())  # nothing was written
