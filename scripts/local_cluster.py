"""A multi-node, autoscaling Ray cluster on this machine: Ray's fake multi-node provider, for tests and demos.

``ray start --head --autoscaling-config=<generated yaml>`` with ``RAY_FAKE_CLUSTER=1`` and ``provider: {type:
fake_multinode}``: the real Ray autoscaler (the head's monitor process) launches and terminates worker nodes, each
a real raylet with its own resources, object store and workers (Ray 2.60,
``ray/autoscaler/_private/fake_multi_node/node_provider.py``). The node types mirror ``cluster.yaml``'s worker
types by name, shrunk to fit a laptop; the GPU types advertise ``fake_gpu`` (and cluster.yaml's
``accelerator_type:*`` resource) instead of ``GPU``, so placement is exercised without CUDA. Every node carries the
label ``flowtts/node-type`` with its type, so the node table says which type each node is.

What Ray does not do here: its fake provider starts every node in the head's ``--temp-dir``, where a node that
leaves deletes the job working_dirs it unpacked, the driver's among them; ``fake_node_provider.py`` gives each
node a temp dir of its own, as every machine of a real cluster has. The head's type is the provider's fixed
``ray.head.default`` (cluster.yaml calls it ``head``).

Everything listens on 127.0.0.1 and is stopped by PID (``LocalRayHead.stop``: the fake nodes' raylets are in the
head's process group, their workers are found through ``RAY_RAYLET_PID``); never ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from local_services import RAY, LocalRayHead, _alive, _pgid, _pids, _raylet_of, _read, free_ports

HEAD_TYPE = "ray.head.default"  # the name the fake provider gives its head node (cluster.yaml: `head`)
NODE_TYPE_LABEL = "flowtts/node-type"
FAKE_GPU = "fake_gpu"  # what the GPU-like node types advertise instead of GPU
MIB = 2**20
# Ray's switch that makes every process it starts (the fake nodes too) take 127.0.0.1 as its node IP; a driver
# in another process needs it too (before it imports ray) to reach the cluster
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass(frozen=True)
class NodeType:
    resources: dict[str, float]  # as a node advertises them (CPU, custom resources)
    max_workers: int
    min_workers: int = 0


# cluster.yaml's worker types by name, with 1-2 CPUs each so several raylets fit on 2 cores.
NODE_TYPES = {
    "cpu_worker": NodeType({"CPU": 1}, max_workers=2),
    "gpu_l4": NodeType({"CPU": 1, FAKE_GPU: 1, "accelerator_type:L4": 1}, max_workers=2),
    "gpu_a10g": NodeType({"CPU": 1, FAKE_GPU: 1, "accelerator_type:A10G": 1}, max_workers=2),
    "gpu_a10g_x4": NodeType({"CPU": 2, FAKE_GPU: 4, "accelerator_type:A10G": 1}, max_workers=1),
    "gpu_h100_x8": NodeType({"CPU": 2, FAKE_GPU: 8, "accelerator_type:H100": 1}, max_workers=1),
}


@dataclass
class LocalAutoscalingCluster:
    """A head (``head_cpus`` CPUs for tasks: 0 puts every task on a worker node, as a busy head would) and
    worker node types that start at ``min_workers`` (0) and go away after ``idle_timeout_minutes`` idle."""

    env: dict[str, str]  # the head's environment (``service_env()``); job drivers and nodes inherit it
    node_types: dict[str, NodeType] = field(default_factory=lambda: dict(NODE_TYPES))
    head_cpus: int = 0
    max_workers: int = 4  # all worker types together
    idle_timeout_minutes: float = 0.1
    object_store_mb: int = 100  # per node (Ray's minimum is about 75)
    log: Path | None = None
    head: LocalRayHead | None = None

    def autoscaling_config(self, gcs_address: str, temp_root: Path) -> dict:
        """The autoscaler's config, complete: the monitor reads it as it is (no defaults are filled in). Each
        node the autoscaler launches gets a temp dir under ``temp_root``."""
        types = {
            HEAD_TYPE: {"resources": {"CPU": self.head_cpus}, "node_config": {}, "max_workers": 0},
            **{
                name: {
                    # no object_store_memory here (RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES caps it): the
                    # autoscaler scores a type by its least-used resource, so an unused one would tie every type
                    # and CPU-only demand would go to the largest GPU-like node instead of a cpu_worker
                    "resources": dict(kind.resources),
                    "labels": {NODE_TYPE_LABEL: name},
                    "node_config": {},
                    "min_workers": kind.min_workers,
                    "max_workers": kind.max_workers,
                }
                for name, kind in self.node_types.items()
            },
        }
        return {
            "cluster_name": "flowtts-local",
            "max_workers": self.max_workers,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {
                "type": "external",  # Ray's fake_multinode provider, each node with its own temp dir
                "module": "fake_node_provider.PerNodeTempDirProvider",
                "temp_root": str(temp_root),
                "gcs_address": gcs_address,
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands")},
            **{key: [] for key in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        }

    def start(self, timeout_s: float = 180) -> str:
        """Start the head (and with it the autoscaler); return the job/dashboard address once it answers."""
        self.root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: AF_UNIX socket paths < 108 bytes
        (gcs,) = free_ports(1)
        config = self.root / "autoscaling.yaml"
        config.write_text(
            yaml.safe_dump(self.autoscaling_config(f"127.0.0.1:{gcs}", self.root / "nodes"), sort_keys=False)
        )
        env = {
            **self.env,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # the autoscaler's loop, 5 s by default
            "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(self.object_store_mb * MIB),  # each fake node's
            **LOOPBACK_ENV,
            # the monitor imports scripts/fake_node_provider.py
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), self.env.get("PYTHONPATH")])),
        }
        self.head = LocalRayHead(
            env=env,
            num_cpus=self.head_cpus,
            log=self.log,
            temp_dir=str(self.root / "ray"),
            port=gcs,
            extra_args=[
                f"--autoscaling-config={config}",
                "--node-ip-address=127.0.0.1",
                f"--object-store-memory={self.object_store_mb * MIB}",
                f"--labels={NODE_TYPE_LABEL}={HEAD_TYPE}",
            ],
        )
        try:
            self.address = self.head.start(timeout_s)
            self.gcs_address = self.head.gcs_address
        except BaseException:
            self.stop()
            raise
        return self.address

    def submit(self, *entrypoint: str, **options) -> str:
        """``ray job submit`` to this cluster and wait for success (``LocalRayHead.submit``)."""
        return self.head.submit(*entrypoint, **options)

    def nodes(self, node_type: str | None = None, alive: bool = True) -> list:
        """The nodes of Ray's node table (``ray.util.state.list_nodes``: ``NodeState`` with ``resources_total``
        and ``labels``), of one type if given; ``alive=False`` includes those that left."""
        from ray.util.state import list_nodes

        filters = [("state", "=", "ALIVE")] if alive else []
        found = list_nodes(address=self.address, filters=filters, detail=True, raise_on_missing_output=False)
        return [node for node in found if node_type in (None, node.labels.get(NODE_TYPE_LABEL))]

    def wait_for_nodes(self, node_type: str, count: int, timeout_s: float, alive: bool = True) -> list:
        """Poll the node table until it holds exactly ``count`` nodes of ``node_type`` (alive ones, or ever
        ``alive=False``: at least ``count``); return them, or raise ``TimeoutError`` naming what it saw."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.nodes(node_type, alive)
            if len(found) == count or (not alive and len(found) >= count):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} {node_type} nodes, not {count}, after {timeout_s} s")
            time.sleep(1)

    def status(self) -> str:
        """What ``ray status`` prints for this cluster (nodes by type, pending launches, demands)."""
        done = subprocess.run(
            [RAY, "status", f"--address={self.gcs_address}"],
            env=self.head.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout + done.stderr

    def processes(self) -> list[int]:
        """The live processes of this cluster: any that names its temp dir on its command line (GCS, raylets,
        agents, monitor, dashboard) and the workers of its raylets."""
        if not hasattr(self, "root"):
            return []
        root = str(self.root)
        named = {pid for pid in _pids() if root in _read(pid, "cmdline")}
        raylets = {pid for pid in named if "raylet" in _read(pid, "comm")}
        ours = named | {pid for pid in _pids() if _raylet_of(pid) in raylets}
        return sorted(pid for pid in ours if pid != os.getpid() and _alive(pid))

    def head_rss_mb(self) -> float:
        """Resident memory of the head's processes (GCS, raylet, dashboard, autoscaler, agents), in MiB."""
        group = [pid for pid in _pids() if _pgid(pid) == self.head.process.pid]
        rss_kb = [
            int(line.split()[1])
            for pid in group
            for line in _read(pid, "status").splitlines()
            if line.startswith("VmRSS:")
        ]
        return sum(rss_kb) / 1024

    def kill_node(self, node_id: str) -> list[int]:
        """Kill a worker node as a lost machine dies: SIGKILL its raylet, the processes of its temp dir (agents)
        and its workers at once, with no chance to tell anyone. Returns the PIDs killed."""
        flag = f"--node_id={node_id}"
        raylets = [
            pid for pid in _pids() if "raylet" in _read(pid, "comm") and flag in _read(pid, "cmdline").split("\0")
        ]
        if not raylets:
            raise LookupError(f"no raylet of node {node_id} is running")
        (raylet,) = raylets
        temp_dir = next(
            a.partition("=")[2] for a in _read(raylet, "cmdline").split("\0") if a.startswith("--temp_dir=")
        )
        if not temp_dir.startswith(str(self.root / "nodes")):
            raise ValueError(f"node {node_id} is not a worker node the autoscaler started (temp dir {temp_dir})")
        doomed = {raylet} | {pid for pid in _pids() if temp_dir in _read(pid, "cmdline") or _raylet_of(pid) == raylet}
        for pid in sorted(doomed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(doomed)

    def stop(self) -> None:
        """Stop the head and every node the autoscaler started; SIGKILL whatever of this cluster outlives that."""
        if self.head is None:
            return
        self.head.stop()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        self.head = None
