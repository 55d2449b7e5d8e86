"""The one way every job connects to Ray (``jobs/preprocess.py``, ``jobs/train.py``, ``jobs/train_duration.py``).

Storage credentials and endpoints are not forwarded here: a job run locally starts its own Ray, whose
workers inherit this process's environment (``AWS_*``, ...); on a cluster, set them on the nodes (IAM
role, ``cluster.yaml``'s env file) or in the job's ``runtime_env`` (``ray job submit --runtime-env-json
'{"env_vars": {...}}'``), which reaches the driver and every worker. See docs/cluster.md.
"""

from __future__ import annotations

import math
import os

import ray


def connect_ray(cpus_needed: float = 1, num_cpus: int | None = None) -> None:
    """Attach to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), else start a private local Ray
    with ``num_cpus`` (default: this machine's), at least ``cpus_needed``."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    num_cpus = max(num_cpus or os.cpu_count() or 1, math.ceil(cpus_needed))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
