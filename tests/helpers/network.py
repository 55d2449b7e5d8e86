"""What the processes of a test did on the network, as ``tests/helpers/netguard/sitecustomize.py`` recorded it."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from pathlib import Path

NETGUARD = Path(__file__).resolve().parent / "netguard"

# MLflow turns its telemetry off by itself when one of these is set (mlflow/telemetry/utils.py,
# _is_ci_env_or_testing): the services of a test that checks flowtts' own defaults must not inherit them
MLFLOW_CI_MARKERS = frozenset(
    {
        "PYTEST_CURRENT_TEST",
        "GITHUB_ACTIONS",
        "CI",
        "CIRCLECI",
        "GITLAB_CI",
        "JENKINS_URL",
        "TRAVIS",
        "TF_BUILD",
        "BITBUCKET_BUILD_NUMBER",
        "CODEBUILD_BUILD_ARN",
        "BUILDKITE",
        "TEAMCITY_VERSION",
        "CLOUD_RUN_EXECUTION",
        "RUNBOT_HOST_URL",
        "RUNBOT_BUILD_NAME",
        "RUNBOT_WORKER_ID",
    }
)
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
NETWORK_FAMILIES = {"AF_INET", "AF_INET6"}


def recorded_env(env: dict[str, str], log_dir: Path) -> dict[str, str]:
    """``env`` with the recorder on ``PYTHONPATH`` (before what was there), writing to ``log_dir``, and without
    MLflow's CI markers."""
    path = os.pathsep.join(filter(None, [str(NETGUARD), env.get("PYTHONPATH")]))
    env = {key: value for key, value in env.items() if key not in MLFLOW_CI_MARKERS}
    return {**env, "PYTHONPATH": path, "NETGUARD_LOG_DIR": str(log_dir)}


def read_records(log_dir: Path) -> list[dict]:
    """Every record of every process, in file order (a line cut short by a killed process is skipped)."""
    records = []
    for file in sorted(log_dir.glob("*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.endswith("}"):
                records.append(json.loads(line))
    return records


@functools.cache
def own_addresses() -> frozenset[str]:
    """The addresses of this machine's interfaces. Ray gives a node an address other nodes can reach (``ray start
    --node-ip-address=127.0.0.1`` is replaced by one), so its processes connect to that one: such a
    connection never leaves the machine."""
    ipv4 = re.findall(r"\|-- ([\d.]+)\n\s+/32 host LOCAL", Path("/proc/net/fib_trie").read_text())
    inet6 = Path("/proc/net/if_inet6")
    lines = inet6.read_text().splitlines() if inet6.exists() else []
    ipv6 = [str(ipaddress.ip_address(bytes.fromhex(line.split()[0]))) for line in lines]
    return frozenset(ipv4 + ipv6)


def is_local_host(host: object) -> bool:
    """A name or address of this machine: loopback, an address of its own interfaces, or none
    (``getaddrinfo(None, port)``, a wildcard bind)."""
    if host is None or host == "" or host == b"":
        return True
    host = str(host).strip("[]").lower()
    if host in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False  # a name that a resolver would be asked about
    return address.is_loopback or address.is_unspecified or str(address) in own_addresses()


def goes_outside(record: dict) -> bool:
    """Whether a record names a host or an address beyond loopback."""
    kind = record["kind"]
    if kind in {"getaddrinfo", "gethostbyname"}:
        return not is_local_host(record.get("host"))
    if kind == "create_connection":
        return not is_local_host(record["address"][0])
    if kind in {"connect", "connect_ex"}:
        return record.get("family") in NETWORK_FAMILIES and not is_local_host(record["address"][0])
    return False


# Ray 2.60's dashboard asks the cloud metadata services which cloud it runs on whenever a head starts without
# ~/ray_bootstrap_config.yaml (a `ray up` head has one; `ray start` by hand and KubeRay do not), whatever the
# usage-stats setting (ray/dashboard/modules/usage_stats/usage_stats_head.py: run() ->
# get_cluster_config_to_report -> get_cloud_from_metadata_requests). No setting turns it off: the one known
# exception, named exactly, and documented in docs/cluster.md.
RAY_METADATA_HOSTS = {"169.254.169.254", "metadata.google.internal"}


def is_ray_metadata_probe(record: dict) -> bool:
    host = record.get("host") if "host" in record else (record.get("address") or [None])[0]
    return "dashboard" in record["cmdline"] and str(host) in RAY_METADATA_HOSTS
