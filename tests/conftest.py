"""Fixtures shared by the tests (paths and builders are in ``tests.helpers``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtts.usage_reporting import usage_reporting_off
from tests.helpers import DEV_CORPUS, FIXTURES, require


def pytest_configure(config: pytest.Config) -> None:
    """The test session goes through ``flowtts.usage_reporting`` before any test imports MLflow or starts Ray;
    the services and Ray instances it starts inherit the variables."""
    usage_reporting_off()


@pytest.fixture(scope="session")
def dit_fixture() -> Path:
    return require(FIXTURES / "dit-v1-tiny")


@pytest.fixture(scope="session")
def dev_corpus() -> Path:
    return require(DEV_CORPUS)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on loopback (moto's standalone server); yields the environment that reaches it."""
    from local_services import LocalS3Server

    server = LocalS3Server(tmp_path_factory.mktemp("moto"))
    env = server.start()
    yield env
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process reaches the loopback S3 server through the standard AWS variables."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env, request) -> str:
    """A fresh bucket for this test: ``s3://<name>``."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", f"t-{request.node.name.lower()}")[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server) -> Iterator[None]:
    """One private local Ray instance for the in-process pipeline tests (reused if one is already up). Its job
    runtime_env carries the loopback S3 server's AWS variables to every worker, as a user's job on a cluster
    does (``ray job submit --runtime-env-json '{"env_vars": {...}}'``); the driver gets them from ``s3_env``."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = tempfile.mkdtemp(prefix="ray-dp-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
        runtime_env={"env_vars": s3_server},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
