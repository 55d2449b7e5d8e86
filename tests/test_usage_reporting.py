"""flowtts.usage_reporting: MLflow telemetry and Ray usage stats are off unless the user set them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from flowtts.usage_reporting import USAGE_REPORTING_OFF, usage_reporting_off
from tests.helpers.network import MLFLOW_CI_MARKERS, goes_outside, read_records, recorded_env
from trainer.cluster import _submitted_env_vars


def test_defaults_are_applied_where_unset():
    environ = {"PATH": "/bin"}
    off = {**USAGE_REPORTING_OFF, "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/"}  # the disabled notice too
    assert (
        usage_reporting_off(environ)
        == off
        == {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
        }
    )
    assert environ == {"PATH": "/bin", **off}
    assert usage_reporting_off(environ) == off  # a second call changes nothing


def test_an_explicit_setting_wins():
    environ = {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": ""}
    assert usage_reporting_off(environ) == {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": ""}
    assert environ == {"MLFLOW_DISABLE_TELEMETRY": "false", "RAY_USAGE_STATS_ENABLED": ""}
    environ = {"RAY_USAGE_STATS_ENABLED": "1"}  # opted in: the report goes where Ray sends it
    assert usage_reporting_off(environ) == {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "1"}
    environ = {"RAY_USAGE_STATS_REPORT_URL": "http://stats.example/"}
    assert usage_reporting_off(environ)["RAY_USAGE_STATS_REPORT_URL"] == "http://stats.example/"


def test_a_submitted_jobs_own_variables_are_not_passed_again(monkeypatch):
    # ray.init under `ray job submit` refuses a runtime_env that sets a variable the job's runtime_env sets
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"MLFLOW_DISABLE_TELEMETRY": "false"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert _submitted_env_vars() == {"MLFLOW_DISABLE_TELEMETRY"}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert _submitted_env_vars() == set()


def test_a_telemetry_client_made_at_mlflow_import_is_dropped():
    """``import mlflow`` makes a telemetry client when the variable is unset; the call drops it (nothing was
    sent: MLflow starts it on the first tracked call), and MLflow then sees telemetry as disabled."""
    script = (
        "import mlflow\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "from flowtts.usage_reporting import usage_reporting_off\n"
        "before = get_telemetry_client() is not None\n"
        "usage_reporting_off()\n"
        "print(before, get_telemetry_client() is None, is_telemetry_disabled())\n"
    )
    skip = set(USAGE_REPORTING_OFF) | MLFLOW_CI_MARKERS | {"DO_NOT_TRACK"}  # MLflow's own switches hide ours
    env = {key: value for key, value in os.environ.items() if key not in skip}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"]


def test_the_recorder_sees_every_process_call_and_flags_what_leaves_loopback(tmp_path):
    """tests/helpers/netguard (used by tests/test_platform_e2e.py) records lookups and connections of a process
    that has it on PYTHONPATH, and the check tells loopback from the rest. A UDP connect sends nothing."""
    script = (
        "import socket\n"
        "socket.getaddrinfo('localhost', 80)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('192.0.2.1', 53))\n"  # TEST-NET-1
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect_ex(('127.0.0.1', 1))\n"
        "socket.socket(socket.AF_UNIX).connect_ex('/nonexistent.sock')\n"
    )
    env = recorded_env({**os.environ, "PYTHONPATH": "/nonexistent"}, tmp_path / "log")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    records = read_records(tmp_path / "log")
    assert [r["kind"] for r in records] == ["start", "getaddrinfo", "connect", "connect_ex", "connect_ex"]
    assert {r["pid"] for r in records} == {records[0]["pid"]}
    assert [r["address"] for r in records if goes_outside(r)] == [["192.0.2.1", 53]]
    assert not goes_outside({"kind": "getaddrinfo", "host": "::1"})
    assert goes_outside({"kind": "getaddrinfo", "host": "config.mlflow-telemetry.io"})
    assert goes_outside({"kind": "create_connection", "address": ["usage-stats.ray.io", 443]})
