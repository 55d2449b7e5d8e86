"""The one way every job connects to Ray (``jobs/preprocess.py``, ``jobs/train.py``, ``jobs/train_duration.py``).

Storage credentials and endpoints are not forwarded here: a job run locally starts its own Ray, whose
workers inherit this process's environment (``AWS_*``, ...); on a cluster, set them on the nodes (IAM
role, ``cluster.yaml``'s env file) or in the job's ``runtime_env`` (``ray job submit --runtime-env-json
'{"env_vars": {...}}'``), which reaches the driver and every worker. See docs/cluster.md.
"""

from __future__ import annotations

import json
import math
import os

import ray

from flowtts.usage_reporting import usage_reporting_off


def connect_ray(cpus_needed: float = 1, num_cpus: int | None = None) -> None:
    """Attach to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), else start a private local Ray
    with ``num_cpus`` (default: this machine's), at least ``cpus_needed``. Usage reporting is off (unless
    the user set its variables) here and in every worker: ``flowtts.usage_reporting``."""
    env_vars = usage_reporting_off()
    if os.environ.get("RAY_ADDRESS"):
        submitted = _submitted_env_vars()  # ray.init refuses to set a variable the submitted job sets
        ray.init(runtime_env={"env_vars": {k: v for k, v in env_vars.items() if k not in submitted}})
        return
    num_cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(cpus_needed))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars})


def _submitted_env_vars() -> set[str]:
    """The variables the runtime_env of this job sets when it runs under ``ray job submit`` (Ray hands the
    job's config to its driver in ``RAY_JOB_CONFIG_JSON_ENV_VAR``); empty otherwise."""
    config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return set((config.get("runtime_env") or {}).get("env_vars") or {})
