"""Training from object storage: ``--data s3://bucket/dataset`` on real Ray Train (2 CPU workers) against the
loopback S3 server (moto). The workers get the AWS variables the way a user gives them to a job: in the
Ray runtime environment."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from flowtts.training import read_train_state
from tests.helpers import SAMPLE_CORPUS
from tests.helpers.shards import copy_dataset, write_dataset
from trainer.launch import FAIL_AT_STEP_ENV, TrainJob, run_training

pytestmark = pytest.mark.integration


def test_training_reads_its_dataset_from_s3(tmp_path, s3_bucket, ray_local, monkeypatch):
    # ray_local: the session's Ray, whose runtime_env gives every worker the loopback S3 server's variables
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(FAIL_AT_STEP_ENV, raising=False)
    local = write_dataset(tmp_path / "ds", SAMPLE_CORPUS, count=8, heldout=1)
    uri = copy_dataset(local, f"{s3_bucket}/datasets/demo")
    job = TrainJob(
        config="tiny",
        data=uri,
        storage=tmp_path / "runs",
        name="from-s3",
        workers=2,
        max_steps=2,
        checkpoint_every=2,
        log_every=1,
        max_failures=0,
        overrides={"train.batch_size_per_gpu": 1000, "train.max_samples": 4, "train.log_samples_per_updates": 0},
    )
    outcome = run_training(job, register=False)

    assert outcome.step == 2 and read_train_state(outcome.checkpoint).step == 2
    run = MlflowClient(outcome.tracking_uri).get_run(outcome.mlflow_run_id)
    assert run.data.params["job.data"] == uri
    assert {"loss", "data_wait_share", "data_wait_share_mean", "peak_rss_mb"} <= set(run.data.metrics)
    assert 0 <= run.data.metrics["data_wait_share_mean"] < 1
