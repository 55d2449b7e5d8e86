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
