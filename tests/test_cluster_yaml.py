"""cluster.yaml: valid for Ray's cluster launcher, and wired to this project.

Offline only: Ray's own JSON schema (shipped in the ray wheel) plus Ray's own config preparation,
which merges the AWS defaults and validates without calling AWS.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.util import accelerators

from flowtts.usage_reporting import usage_reporting_off
from tests.helpers import REPO

CLUSTER_YAML = REPO / "cluster.yaml"
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def node_types(config: dict) -> dict:
    return config["available_node_types"]


def _all_commands(config: dict) -> list[str]:
    cmds = [c for key in COMMAND_LISTS for c in config.get(key, [])]
    for node_type in config["available_node_types"].values():
        cmds += node_type.get("initialization_commands", []) + node_type.get("worker_setup_commands", [])
    return cmds


def _gpu_types(node_types: dict) -> dict:
    return {name: t for name, t in node_types.items() if t["resources"].get("GPU", 0) > 0}


def test_matches_rays_launcher_schema(config: dict) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)  # the draft named by its "$schema"
    validator_cls.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator_cls(schema).iter_errors(config)
    ]
    assert not errors, "cluster.yaml violates ray-schema.json:\n" + "\n".join(errors)


def test_rays_config_preparation_accepts_it(config: dict) -> None:
    # What `ray up` does before it talks to AWS: merge aws/defaults.yaml, merge setup commands,
    # check docker and per-type worker counts, then validate again (schema + cross-field checks).
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    # Our command lists replace the defaults instead of being merged with them.
    assert any("pip install -e /home/ray/flowtts" in c for c in prepared["worker_setup_commands"])
    assert any("mlflow server" in c for c in prepared["head_start_ray_commands"])


def test_provider(config: dict) -> None:
    assert config["cluster_name"] == "flowtts"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"
    assert config["provider"]["cache_stopped_nodes"] is False


def test_docker_image_matches_installed_ray(config: dict) -> None:
    image = config["docker"]["image"]
    repo, tag = image.split(":")
    assert repo == "rayproject/ray", "rayproject/ray-ml is no longer published"
    assert "2.60.0" in tag and "gpu" in tag and "py311" in tag
    assert tag.startswith(ray.__version__ + "-"), f"image {image} != installed ray {ray.__version__}"


def test_cpu_head_and_gpu_workers(config: dict, node_types: dict) -> None:
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) >= 2, "the head runs MLflow, Serve proxy and drivers: give it CPUs"

    gpu = _gpu_types(node_types)
    instance_types = {t["node_config"]["InstanceType"] for t in gpu.values()}
    assert {"g6.xlarge", "g5.xlarge", "g5.12xlarge", "p5.48xlarge"} <= instance_types
    for name, t in gpu.items():
        assert t["min_workers"] == 0, f"{name} should scale from zero"
        assert 1 <= t["max_workers"] <= config["max_workers"], name
        assert t["resources"]["CPU"] >= 1, name


def test_gpu_resources_match_instances(node_types: dict) -> None:
    expected = {  # instance type: (GPUs, vCPUs, Ray accelerator type)
        "g6.xlarge": (1, 4, accelerators.NVIDIA_L4),
        "g5.xlarge": (1, 4, accelerators.NVIDIA_TESLA_A10G),
        "g5.12xlarge": (4, 48, accelerators.NVIDIA_TESLA_A10G),
        "p5.48xlarge": (8, 192, accelerators.NVIDIA_H100),
    }
    for name, t in _gpu_types(node_types).items():
        gpus, cpus, accel = expected[t["node_config"]["InstanceType"]]
        assert t["resources"]["GPU"] == gpus, name
        assert t["resources"]["CPU"] == cpus, name
        assert t["resources"].get(f"accelerator_type:{accel}") == 1, name


def test_setup_installs_the_project(config: dict) -> None:
    assert config["file_mounts"]["/home/ray/flowtts"] == "."
    assert (REPO / "pyproject.toml").is_file()
    assert "pip install -e /home/ray/flowtts" in config["setup_commands"]
    excluded = set(config["rsync_exclude"])
    assert {".venv", "outputs"} <= excluded


def test_job_environment(config: dict) -> None:
    setup = "\n".join(config["setup_commands"])
    for var in ("MLFLOW_TRACKING_URI=http://", "FLOWTTS_STORAGE=s3://", "FLOWTTS_VOICES_URI=s3://"):
        assert var in setup, var
    # The variables reach `ray start` (and so every worker process) through ~/.bashrc.
    assert "~/.bashrc" in setup


def test_nothing_phones_home(config: dict) -> None:
    # every node's ~/flowtts.env (sourced by the shell that runs `ray start` and `mlflow server`) turns
    # MLflow telemetry and Ray usage stats off, and every `ray start` says so too
    env_file = next(c for c in config["setup_commands"] if "/home/ray/flowtts.env" in c and ">" in c)
    for key, value in usage_reporting_off({}).items():  # with the head's "usage stats disabled" notice
        assert f'echo "export {key}={value}"' in env_file, key
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("--disable-usage-stats" in c for c in starts), key


def test_mlflow_server_on_head(config: dict) -> None:
    head_cmds = "\n".join(config["head_setup_commands"] + config["head_start_ray_commands"])
    assert "mlflow server" in head_cmds
    for part in (
        "--backend-store-uri sqlite:////home/ray/mlflow/mlflow.db",
        "--artifacts-destination s3://",
        "--host 0.0.0.0",
        "--port 5000",
        "nohup",
    ):
        assert part in head_cmds, part
    worker_cmds = "\n".join(config["worker_setup_commands"] + config["worker_start_ray_commands"])
    assert "mlflow server" not in worker_cmds


def test_auth_mode_is_explicit(config: dict) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        assert all("RAY_AUTH_MODE=" in c for c in starts), key
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in worker_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in " ".join(config["head_start_ray_commands"])


def test_commands_are_valid_bash(config: dict) -> None:
    cmds = _all_commands(config)
    assert len(cmds) >= 6
    bad = []
    for cmd in cmds:
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        if result.returncode != 0:
            bad.append(f"{cmd!r}: {result.stderr.strip()}")
    assert not bad, "\n".join(bad)
