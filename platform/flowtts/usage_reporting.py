"""Nothing phones home: MLflow's telemetry and Ray's usage stats are off unless the user turns them on.

Both libraries report usage to their makers' servers by default (MLflow from every process that calls its
API, Ray from the head node). Every flowtts entry point calls :func:`usage_reporting_off` before MLflow or
Ray start, and passes what it returns on in the Ray runtime environments it builds, so job drivers, Ray
workers and Serve replicas run with the same settings. A variable the user has set (to anything) is left
alone: ``MLFLOW_DISABLE_TELEMETRY=false`` and ``RAY_USAGE_STATS_ENABLED=1`` opt back in.

Pure Python; nothing happens at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# variable -> the value that turns the reporting off
USAGE_REPORTING_OFF: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # mlflow/telemetry: no config fetch, no usage records
    "RAY_USAGE_STATS_ENABLED": "0",  # ray usage stats: the head reports nothing
}
# With usage stats off, a `ray start` head still posts a "disabled" notice to usage-stats.ray.io (Ray 2.60,
# dashboard UsageStatsHead); pointed at the discard port on loopback, it goes nowhere.
RAY_REPORT_URL, NOWHERE = "RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/"


def usage_reporting_off(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each variable of ``USAGE_REPORTING_OFF`` in ``environ`` (default: ``os.environ``) that is not set
    there, and return all of them as they now stand: the ``env_vars`` for a Ray runtime environment.

    On ``os.environ`` in a process that has already imported MLflow, MLflow's telemetry client is
    re-initialised, so one made before the variable was set is dropped (it has sent nothing yet: MLflow
    starts it on the first tracked call)."""
    target = os.environ if environ is None else environ
    changed = False
    for key, value in USAGE_REPORTING_OFF.items():
        if key not in target:
            target[key] = value
            changed = True
    if target["RAY_USAGE_STATS_ENABLED"] == "0" and RAY_REPORT_URL not in target:
        target[RAY_REPORT_URL] = NOWHERE
    if changed and target is os.environ and "mlflow.telemetry" in sys.modules:
        sys.modules["mlflow.telemetry"].set_telemetry_client()
    return {key: target[key] for key in (*USAGE_REPORTING_OFF, RAY_REPORT_URL) if key in target}
