"""Shared test helpers: where things are (the repo, the read-only ../shared folder beside it) and a clean
skip when ../shared is absent (a failure under CI=true). Builders live in the submodules (``shards``,
``registry``, ``models``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "f5tts-reference"
DEV_CORPUS = SHARED / "corpus" / "vi-espeak-dev"
SAMPLE_CORPUS = REPO / "samples" / "vi-demo"


def require(path: Path) -> Path:
    """``path`` (under ../shared); when it is absent the test skips, or fails under ``CI=true`` (CI has ../shared,
    so a missing file there is a broken checkout, not a reason to pass)."""
    if not path.exists():
        message = f"{path} is absent (the read-only ../shared folder beside the repo is not available)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def load_job(name: str):
    """The module of ``jobs/<name>.py`` (the jobs folder is not a package), to call its ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", REPO / "jobs" / f"{name}.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job
