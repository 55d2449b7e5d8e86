"""What the repository holds and what it keeps out: no large tracked files, and every output flowtts writes
inside the checkout by default ignored by git (``.gitignore``) and by Ray's working_dir upload
(``.rayignore``: ``ray job submit --working-dir .`` and the studio's Train section upload the checkout).

Both ignore files are checked on their own, in a scratch tree, so that neither a local git configuration nor
the other file hides a gap: ``.gitignore`` by ``git check-ignore`` in a fresh repository, ``.rayignore`` by
the walk Ray itself makes when it packs a working_dir, with ``.gitignore`` left out (as under
``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

MAX_TRACKED_BYTES = 1_000_000
LARGE_FILES_ALLOWED_UNDER = ("tests/fixtures/", "samples/", "docs/")

# A file inside every place flowtts (or a documented example) writes to when run from the checkout.
DEFAULT_OUTPUTS = [
    "outputs/ray_train/vi-tiny/checkpoint_000000/model.safetensors",  # jobs/train.py: $FLOWTTS_STORAGE default
    "outputs/ray_train/mlflow.db",  # the embedded MLflow store beside the Ray Train storage
    "outputs/ray_train/mlartifacts/1/abc/artifacts/checkpoint/model.safetensors",
    "voices/0123abcd/audio.wav",  # serving's voice store: $FLOWTTS_VOICES_URI default ./voices
    "voices/0123abcd/voice.json",
    "demo_out/demo.wav",  # make demo
    "demo_out/data/shards/shard-00000.parquet",
    "demo_out/mlflow.db",
    "mlflow.db",  # MLflow's own default store without a tracking URI (./mlflow.db, ./mlruns)
    "mlruns/0/meta.yaml",
    "mlartifacts/1/abc/artifacts/model.safetensors",
    "data/vi-dev/shards/shard-00000.parquet",  # jobs/preprocess.py --out data/... (the README's examples)
    "runs/tiny/checkpoint/model.safetensors",  # bench/learning_run.py --out runs/...
    "export/step.onnx",  # jobs/export.py --out export/
    "export/step.onnx.data",
    "export/step.pt2",
    "export/export.json",
    "exports/step.onnx",
    "step.onnx",  # an exported step anywhere
    "bench/step.pt2",
    "out.wav",  # jobs/synthesize.py / jobs/edit.py --out in the README's examples
    "talk.mp3",
    "edited.flac",
    "onnxruntime_profile__2026-12-02_06-05-00_780.json",  # ONNX Runtime's profiler (enable_profiling)
    "__pycache__/x.cpython-311.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".ruff_cache/0.1/x",
    ".venv/bin/python",
    "flowtts.egg-info/PKG-INFO",
]


def _git(*args: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    """Tracked files still in the working tree (one deleted but not yet committed is on its way out)."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout")
    listing = _git("ls-files", "-z")
    assert listing.returncode == 0, listing.stderr
    return [path for path in listing.stdout.split("\0") if path and (REPO / path).is_file()]


@pytest.fixture(scope="module")
def scratch(tracked, tmp_path_factory) -> Path:
    """A fresh git repository with the two ignore files, every tracked path and every default output."""
    root = tmp_path_factory.mktemp("checkout")
    assert _git("init", "-q", cwd=root).returncode == 0
    for name in (".gitignore", ".rayignore"):
        shutil.copy(REPO / name, root / name)
    for path in [*tracked, *DEFAULT_OUTPUTS]:
        if path in (".gitignore", ".rayignore"):
            continue
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    return root


def _git_ignored(root: Path, paths: list[str]) -> set[str]:
    # No global excludes file, and .git/info/exclude of a fresh repository is comments only.
    args = ["-c", "core.excludesFile=", "check-ignore", "--no-index", "--stdin", "-z"]
    result = _git(*args, cwd=root, stdin="\0".join(paths))
    assert result.returncode in (0, 1), result.stderr
    return {path for path in result.stdout.split("\0") if path}


def _ray_uploaded(root: Path) -> set[str]:
    """The files Ray packs from ``root`` as a working_dir, reading .rayignore and no .gitignore."""
    from ray._private.runtime_env.packaging import _dir_travel  # the walk of Ray's working_dir packing

    seen: list[Path] = []
    _dir_travel(root, [], seen.append, include_gitignore=False)
    return {path.relative_to(root).as_posix() for path in seen if path.is_file()}


def test_no_large_tracked_files_outside_fixtures_samples_and_docs(tracked):
    large = {
        path: size
        for path in tracked
        if not path.startswith(LARGE_FILES_ALLOWED_UNDER) and (size := (REPO / path).stat().st_size) > MAX_TRACKED_BYTES
    }
    assert not large, f"tracked files over {MAX_TRACKED_BYTES} bytes: {large}"


def test_gitignore_covers_every_default_output_and_no_tracked_file(scratch, tracked):
    assert set(DEFAULT_OUTPUTS) - _git_ignored(scratch, DEFAULT_OUTPUTS) == set()
    assert _git_ignored(scratch, tracked) == set()


def test_rayignore_keeps_every_default_output_out_of_the_upload(scratch, tracked):
    uploaded = _ray_uploaded(scratch)
    assert uploaded & set(DEFAULT_OUTPUTS) == set()
    assert set(tracked) - uploaded <= {".gitignore", ".rayignore"}  # Ray never uploads its ignore files
