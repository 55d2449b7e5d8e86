"""Training on object storage against the loopback S3 server (moto), on real Ray Train (2 CPU workers):
``--data s3://bucket/dataset`` and ``--storage s3://bucket/runs`` (what ``cluster.yaml`` gives every node).
Checkpoints, the run's MLflow record and the warm-start weights are objects in the bucket, nothing is written
to a local folder named ``s3:``, a resubmission resumes from the checkpoint in the bucket, and the last one
is registered. The workers get the AWS variables the way a user gives them to a job: in the Ray runtime
environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flowtts.checkpoint import save_checkpoint
from flowtts.config import load_config
from flowtts.model import build_model
from flowtts.storage import resolve
from flowtts.text import Vocab
from flowtts.training import read_train_state
from tests.helpers import SAMPLE_CORPUS, load_job
from tests.helpers.registry import attempt_records
from tests.helpers.shards import copy_dataset, write_dataset
from trainer.launch import TrainJob, run_training
from trainer.settings import INIT_DIR, RUN_INFO_FILE
from trainer.tracking import TrackingError, tracking_uri_for

pytestmark = pytest.mark.integration


def test_training_on_s3_data_and_storage_resumes_and_registers(tmp_path, s3_bucket, ray_local, monkeypatch):
    # ray_local: the session's Ray, whose runtime_env gives every worker the loopback S3 server's variables
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # a storage URI needs one (no sqlite on S3)
    local = write_dataset(tmp_path / "ds", SAMPLE_CORPUS, count=8, heldout=1)
    uri = copy_dataset(local, f"{s3_bucket}/datasets/demo")
    vocab = Vocab.load(local / "vocab.txt")
    base = save_checkpoint(build_model(load_config("tiny").model.with_vocab_size(len(vocab))), tmp_path / "base", vocab)
    work = tmp_path / "cwd"  # the driver's working directory: a storage URI must not become a folder in it
    work.mkdir()
    monkeypatch.chdir(work)
    storage = f"{s3_bucket}/runs"

    def train(max_steps: int, register: bool):
        job = TrainJob(
            config="tiny",
            data=uri,
            storage=storage,
            name="from-s3",
            init_from=base,
            workers=2,
            max_steps=max_steps,
            checkpoint_every=2,
            log_every=1,
            max_failures=0,
            registered_model="flowtts-s3",
            overrides={"train.batch_size_per_gpu": 1000, "train.max_samples": 4, "train.log_samples_per_updates": 0},
        )
        assert job.storage == storage
        return run_training(job, register=register)

    first = train(max_steps=2, register=False)
    assert first.step == 2 and first.checkpoint == f"{storage}/from-s3/checkpoint_00000002"
    with resolve(first.checkpoint).local_folder() as folder:  # a download, removed afterwards
        checkpoint_next = read_train_state(folder).info["next_batch"]
        assert read_train_state(folder).step == 2
    assert not Path(folder).exists()

    second = train(max_steps=4, register=True)  # a resubmission: the same --name and --storage
    assert second.step == 4 and second.mlflow_run_id == first.mlflow_run_id and second.tracking_uri == tracking_uri
    assert second.checkpoint == f"{storage}/from-s3/checkpoint_00000004"
    objects = {f.relative_to(resolve(storage)) for f in resolve(storage).files(recursive=True)}
    assert f"from-s3/{RUN_INFO_FILE}" in objects
    run_info = json.loads(resolve(f"{storage}/from-s3/{RUN_INFO_FILE}").read_text())
    assert run_info["mlflow_run_id"] == first.mlflow_run_id
    assert any(name.startswith(f"from-s3/{INIT_DIR}/") for name in objects), objects  # the warm start
    for step in (2, 4):
        assert any(name.startswith(f"from-s3/checkpoint_{step:08d}/rng_rank1") for name in objects), objects
    assert not [p for p in tmp_path.rglob("s3:*")], "a storage URI was written as a local folder"

    client = MlflowClient(tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.data.params["job.data"] == uri and run.data.params["job.storage"] == storage
    assert {"loss", "data_wait_share", "data_wait_share_mean", "peak_rss_mb"} <= set(run.data.metrics)
    # the resubmission started at the step-2 checkpoint in the bucket: each step trained once, the same next batch
    assert sorted(m.step for m in client.get_metric_history(first.mlflow_run_id, "loss")) == [1, 2, 3, 4]
    records = attempt_records(tracking_uri, first.mlflow_run_id)
    assert sorted(records) == [0, 2] and records[2]["resumed"]
    assert records[2]["first_batch"] == records[2]["checkpoint_next_batch"] == checkpoint_next

    registration = second.registration  # from the checkpoint in the bucket
    assert registration is not None and registration.step == 4
    version = client.get_model_version_by_alias("flowtts-s3", "candidate")
    assert str(version.version) == registration.version and version.run_id == first.mlflow_run_id


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
