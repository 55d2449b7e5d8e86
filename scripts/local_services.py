"""Services on this machine for the demo and the tests: a private Ray head, an MLflow server, an S3 API.

Both listen on 127.0.0.1 on free (non-default) ports and are stopped by PID: never ``ray stop``, which
would stop every Ray cluster of the user. Used by ``scripts/demo.py`` and the integration tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flowtts.usage_reporting import usage_reporting_off

BIN = Path(sys.executable).parent
SUBMIT_HICCUPS = ("ConnectionError", "No available agent to submit job")  # the job was not created: submit again
RAY = str(BIN / "ray")
MLFLOW = str(BIN / "mlflow")
MOTO_SERVER = str(BIN / "moto_server")


def service_env(**changes: str) -> dict[str, str]:
    """This environment with the venv's executables first on PATH (a Ray job driver runs `python` from the
    head's PATH), Ray auth set explicitly, no inherited Ray address, and MLflow telemetry and Ray usage stats
    off unless this environment or ``changes`` set them (``flowtts.usage_reporting``)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(changes)
    usage_reporting_off(env)
    return env


def wait_until_answers(
    url: str,
    timeout_s: float,
    process: subprocess.Popen | None = None,
    accept: Callable[[bytes], bool] = lambda body: True,
) -> bytes:
    """Poll ``url`` until it answers 200 with a body ``accept`` takes (any, by default) and return
    the body. Refused, held (timed out), non-200 and unaccepted answers are waited out, as while a server
    starts; a ``process`` that exits first is an error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        with contextlib.suppress(OSError):  # connection refused, timeout, HTTPError
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == 200 and accept(body := response.read()):
                    return body
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer 200 as awaited within {timeout_s} s")


def _has_alive_node(nodes_answer: bytes) -> bool:
    """Whether the dashboard's ``/api/v0/nodes`` answer lists a node that is alive."""
    nodes = json.loads(nodes_answer)["data"]["result"]["result"]
    return any(node["state"] == "ALIVE" for node in nodes)


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
    num_cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    log: Path | None = None
    process: subprocess.Popen | None = None
    # short: Ray's socket paths under the temp dir must fit the 107-byte limit of AF_UNIX
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    port: int | None = None  # the GCS port (default: a free one), for callers that must name it beforehand
    extra_args: list[str] = field(default_factory=list)  # more `ray start` options (scripts/local_cluster.py)

    def start(self, timeout_s: float = 180, attempts: int = 2) -> str:
        """Start the head and return the job/dashboard address once its job API answers and its node is alive.

        ``ray start`` gives its raylet 30 s to register with the GCS (fixed in Ray 2.60) and exits otherwise,
        after its dashboard has started answering: a head starved of CPU misses that now and then (seen once in
        a CI run). Such a start is stopped and made again, ``attempts`` times in all."""
        for _ in range(attempts - 1):
            try:
                return self._start_once(timeout_s)
            except RuntimeError as exc:  # ray start exited
                print(f"{exc}; starting the head again", file=sys.stderr, flush=True)
        return self._start_once(timeout_s)

    def _start_once(self, timeout_s: float) -> str:
        gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
        gcs = self.port or gcs
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.address = f"http://127.0.0.1:{dashboard}"
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                f"--num-cpus={self.num_cpus}",
                "--disable-usage-stats",
                f"--port={gcs}",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={runtime_env}",
                f"--metrics-export-port={metrics}",
                f"--temp-dir={self.temp_dir}",
                *self.extra_args,
            ],
            env=self.env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_answers(f"{self.address}/api/jobs/", timeout_s, self.process)
            wait_until_answers(f"{self.address}/api/v0/nodes", timeout_s, self.process, accept=_has_alive_node)
        except BaseException:
            self.stop()  # nothing of a head that never answered is left behind
            raise
        return self.address

    def submit(
        self,
        *entrypoint: str,
        cwd: Path,
        echo: bool = False,
        attempts: int = 10,
        timeout_s: float = 1200,
        env_vars: dict[str, str] | None = None,
    ) -> str:
        """``ray job submit --working-dir CWD -- ENTRYPOINT``, then wait for success; returns the job's logs
        (also printed as they come when ``echo``). ``env_vars`` go in the job's runtime_env, which reaches the
        driver and every worker (``--runtime-env-json``).

        Three hiccups of a head starved of CPU are absorbed: a dropped working-dir upload and a head whose job
        agent has not registered yet (``No available agent to submit job``; either way the job was never
        created: submit again, ``attempts`` times), and a dropped log stream (submit returns early: the status
        is polled).
        """
        for _ in range(attempts):
            runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
            output = self._follow(
                "submit", "--working-dir", str(cwd), *runtime_env, "--", *entrypoint, cwd=cwd, echo=echo
            )
            job_id = re.search(r"raysubmit_\w+", output)
            if job_id or not any(hiccup in output for hiccup in SUBMIT_HICCUPS):
                break
            time.sleep(3)
        if not job_id:
            raise RuntimeError(f"ray job submit failed: {output[-4000:]}")
        deadline = time.monotonic() + timeout_s
        while (state := self._finished_state(job_id[0])) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id[0]} not finished after {timeout_s} s")
            time.sleep(3)
        logs = self._follow("logs", job_id[0])
        if state != "succeeded":
            raise RuntimeError(f"job {job_id[0]} {state}: {logs[-4000:]}")
        return logs

    def serve_deploy(self, config: Path) -> None:
        """``serve deploy CONFIG`` to this head (replicas get the head's environment)."""
        subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "--address", self.address],
            env=self.env,
            check=True,
            timeout=300,
        )

    def _finished_state(self, job_id: str) -> str | None:
        """'succeeded', 'failed' or 'was stopped' once the job is over, else None (as `ray job status` says)."""
        found = re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", self._follow("status", job_id))
        return found[1] if found else None

    def _follow(self, command: str, *args: str, cwd: Path | None = None, echo: bool = False) -> str:
        """Output of ``ray job COMMAND --address ADDRESS ARGS`` (stdout and stderr), printed as it comes when
        ``echo``."""
        with subprocess.Popen(
            [RAY, "job", command, "--address", self.address, *args],
            env=self.env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            lines = []
            for line in process.stdout:
                lines.append(line)
                if echo:
                    print(line, end="", flush=True)
        return "".join(lines)

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


@dataclass
class LocalMlflowServer:
    """``mlflow server`` with a sqlite backend and an artifact folder under ``root``, on 127.0.0.1."""

    root: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> str:
        """Start the server and return its tracking URI once ``/health`` answers."""
        (port,) = free_ports(1)
        self.uri = f"http://127.0.0.1:{port}"
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: 2 processes, not 10
        usage_reporting_off(env)  # no telemetry unless self.env asks for it
        self.process = start_server(
            [
                MLFLOW,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            cwd=self.root,
            log_name="mlflow_server.log",
            health_url=f"{self.uri}/health",
            timeout_s=timeout_s,
        )
        return self.uri

    def stop(self) -> None:
        """Stop the server and its uvicorn worker."""
        stop_process_group(self.process)
        self.process = None


@dataclass
class LocalS3Server:
    """moto's standalone S3 API (``moto_server``) on 127.0.0.1; ``env`` is what a client needs to reach it
    the standard way (``AWS_ENDPOINT_URL`` and credentials; moto accepts any key unless told otherwise)."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> dict[str, str]:
        (port,) = free_ports(1)
        self.endpoint = f"http://127.0.0.1:{port}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = start_server(
            [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **self.extra_env},
            cwd=self.root,
            log_name="moto_server.log",
            health_url=f"{self.endpoint}/moto-api/",
            timeout_s=timeout_s,
        )
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        return self.env

    def stop(self) -> None:
        stop_process_group(self.process)
        self.process = None


def start_server(
    argv: list[str], *, env: dict[str, str], cwd: Path, log_name: str, health_url: str, timeout_s: float
) -> subprocess.Popen:
    """Start a server in its own process group, logging to ``cwd/log_name``; return it once ``health_url``
    answers 200, or stop it and raise."""
    log = open(cwd / log_name, "ab")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_answers(health_url, timeout_s, process)
    except BaseException:
        stop_process_group(process)
        raise
    return process


def stop_process_group(process: subprocess.Popen | None) -> None:
    """SIGTERM to the process group a server was started in (``start_new_session``), SIGKILL if it lingers."""
    if process is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
            break


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
