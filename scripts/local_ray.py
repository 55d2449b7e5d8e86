"""A private Ray head on this machine (non-default ports), started and stopped by PID.

Used by ``scripts/demo.py``. Never calls ``ray stop``: that would stop every Ray cluster of the user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class LocalRayHead:
    env: dict[str, str]
    num_cpus: int = 2
    log: Path | None = None
    process: subprocess.Popen | None = None
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="flowtts-ray-", dir="/tmp"))

    def start(self, timeout_s: float = 180) -> str:
        """Start the head and return the job/dashboard address once its job API answers."""
        gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
        self.address = f"http://127.0.0.1:{dashboard}"
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--num-cpus={self.num_cpus}", "--disable-usage-stats",
             f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
             f"--metrics-export-port={metrics}", f"--temp-dir={self.temp_dir}"],
            env=self.env, start_new_session=True, stdout=output, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=5) as response:
                    if response.status == 200:
                        return self.address
            time.sleep(1)
        raise TimeoutError(f"the Ray job API at {self.address} did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Stop the processes this head started: its process group and the workers its raylet spawned."""
        if self.process is None:
            return
        group = [pid for pid in _pids() if _pgid(pid) == self.process.pid]
        raylets = {pid for pid in group if "raylet" in _read(pid, "comm")}
        ours = set(group) | {pid for pid in _pids() if _raylet_of(pid) in raylets}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(_alive(pid) for pid in ours if pid != self.process.pid):
                time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.process = None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        return os.getpgid(pid)
    return None


def _raylet_of(pid: int) -> int | None:
    for entry in _read(pid, "environ").split("\0"):
        if entry.startswith("RAY_RAYLET_PID="):
            return int(entry.removeprefix("RAY_RAYLET_PID="))
    return None


def _alive(pid: int) -> bool:
    state = _read(pid, "stat").rpartition(")")[2].split()
    return bool(state) and state[0] != "Z"
