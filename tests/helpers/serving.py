"""The shipped Serve config, sized for the 2-core test machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO


def small_serve_config(folder: Path, port: int, **args: Any) -> Path:
    """``serve/config.yaml`` on ``port`` with 4 ODE steps by default, one replica of each deployment (0.5 CPU
    for the model) and ``args`` over its ``args:``; written to ``folder/serve.yaml``."""
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update({"default_nfe": 4, **args})
    model, ingress = app["deployments"]
    model["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    model["ray_actor_options"]["num_cpus"] = 0.5
    ingress["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
