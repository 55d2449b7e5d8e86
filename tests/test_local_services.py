"""The helper every integration test starts its Ray head with (``scripts/local_services.py``): a head is ready
only once its node is alive, and a ``ray start`` that exits on the way (a raylet that missed Ray's 30 s to
register, on a CPU-starved machine) is started again instead of failing the module that needed it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import local_services
import pytest
from local_services import LocalRayHead, _alive, _pids, _read, service_env

pytestmark = pytest.mark.integration


def ray_that_fails_once(folder: Path) -> Path:
    """A ``ray`` command whose first start exits 1 at once, as ``ray start`` does when its node times out;
    every later call is the real ``ray``. It records each call."""
    fake = folder / "ray"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{folder}/calls"\n'
        f'if [ ! -e "{folder}/failed" ]; then touch "{folder}/failed"; echo "node timed out" >&2; exit 1; fi\n'
        f'exec "{local_services.RAY}" "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def test_a_head_whose_ray_start_exits_is_started_again_and_ready_with_its_node_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(local_services, "RAY", str(ray_that_fails_once(tmp_path)))
    head = LocalRayHead(env=service_env(), num_cpus=1, log=tmp_path / "head.log")
    try:
        address = head.start(timeout_s=120)
        with urllib.request.urlopen(f"{address}/api/v0/nodes", timeout=30) as answer:
            nodes = json.loads(answer.read())["data"]["result"]["result"]
        assert [node["state"] for node in nodes] == ["ALIVE"]  # ready means the node is there, not just the API
        starts = (tmp_path / "calls").read_text().splitlines()
        assert len(starts) == 2 and all(call.startswith("start --head") for call in starts)
        assert "node timed out" in (tmp_path / "head.log").read_text()
    finally:
        head.stop()
    left = [pid for pid in _pids() if head.temp_dir in _read(pid, "cmdline") and _alive(pid)]
    assert not left, left  # neither start left a process behind


def test_a_head_that_cannot_start_fails_naming_ray_start_after_its_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(local_services, "RAY", str(ray_that_fails_once(tmp_path)))
    with pytest.raises(RuntimeError, match="exited with 1"):
        LocalRayHead(env=service_env(), num_cpus=1).start(timeout_s=60, attempts=1)
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
