"""Shared test helpers: the ../shared folder (skip cleanly when absent) and small builders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "f5tts-reference"
DEV_CORPUS = SHARED / "corpus" / "vi-espeak-dev"
SAMPLE_CORPUS = REPO / "samples" / "vi-demo"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the read-only ../shared folder beside the repo is not available)")
    return path


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
