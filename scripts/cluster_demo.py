"""Watch Ray's autoscaler add worker nodes and take them away again, on this machine (``make cluster-demo``).

Starts the local autoscaling cluster of ``scripts/local_cluster.py`` (a head with no CPUs for tasks and
cluster.yaml's node types, from zero workers), sends tasks that need CPUs, prints ``ray status`` each time the
set of nodes changes while the autoscaler adds ``cpu_worker`` nodes and, once the tasks are done and the idle
timeout has passed, removes them; then stops everything it started. With ``--keep`` the cluster stays up
afterwards, for your own jobs, until Ctrl-C (``make cluster-up``: no demo tasks, just the cluster).

    .venv/bin/python scripts/cluster_demo.py [--tasks 2] [--task-seconds 10] [--idle-timeout-minutes 0.25] [--keep]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter

from local_cluster import HEAD_TYPE, LOOPBACK_ENV, NODE_TYPE_LABEL, LocalAutoscalingCluster
from local_services import service_env

DRIVER_ENV = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "disabled"}  # what a driver or ray CLI of this cluster needs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2, help="tasks of 1 CPU each (a cpu_worker has 1 CPU)")
    parser.add_argument("--task-seconds", type=float, default=10.0, help="how long each task runs")
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.25, help="idle time before a node goes")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up after this long")
    parser.add_argument("--keep", action="store_true", help="keep the cluster up afterwards, until Ctrl-C")
    return parser.parse_args(argv)


def node_counts(cluster: LocalAutoscalingCluster) -> dict[str, int]:
    return dict(sorted(Counter(node.labels.get(NODE_TYPE_LABEL, "?") for node in cluster.nodes()).items()))


def watch(cluster: LocalAutoscalingCluster, until, timeout_s: float, since: float) -> dict[str, int]:
    """Print ``ray status`` whenever the alive nodes change, until ``until(counts)`` holds; return the counts."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        counts = node_counts(cluster)
        if counts != seen:
            print(f"\n--- +{time.monotonic() - since:.0f} s: alive nodes {counts}\n{cluster.status()}", flush=True)
            seen = counts
        if until(counts):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes still {counts} after {timeout_s} s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before ray is imported: this process is a driver of the local cluster
    os.environ.update(DRIVER_ENV)
    # Ctrl-C (or SIGTERM) is taken by sigwait() in keep_up(), or else stops the demo where it is
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = LocalAutoscalingCluster(env=service_env(), idle_timeout_minutes=args.idle_timeout_minutes)
    started = time.monotonic()
    cluster.start()
    print(f"cluster up in {time.monotonic() - started:.0f} s; dashboard {cluster.address}", flush=True)
    try:
        if args.tasks:
            demo(cluster, args)
        if args.keep:
            keep_up(cluster)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        cluster.stop()
    left = cluster.processes()
    print(f"stopped; processes of the cluster left: {left or 'none'}", flush=True)
    return 1 if left else 0


def keep_up(cluster: LocalAutoscalingCluster) -> None:
    """Say how to use the cluster, then wait for Ctrl-C or SIGTERM."""
    env = " ".join(f"{key}={value}" for key, value in DRIVER_ENV.items())
    print(
        f"\nthe cluster stays up until Ctrl-C. Jobs and dashboard: {cluster.address}\n"
        f"  {env} ray job submit --address {cluster.address} --working-dir . -- python jobs/preprocess.py ...\n"
        f"  {env} ray status --address {cluster.gcs_address}\n"
        f"  a driver of your own: {env} RAY_ADDRESS={cluster.gcs_address} python ...",
        flush=True,
    )
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    received = signal.sigwait(stops)
    print(f"\n{signal.Signals(received).name}: stopping the cluster", flush=True)


def demo(cluster: LocalAutoscalingCluster, args: argparse.Namespace) -> None:
    """Tasks of 1 CPU make the autoscaler add ``cpu_worker`` nodes; once they are done the nodes leave."""
    import ray

    try:
        ray.init(address=cluster.gcs_address, log_to_driver=False)

        @ray.remote(num_cpus=1)
        def work(seconds: float) -> str:
            time.sleep(seconds)
            return ray.get_runtime_context().get_node_id()

        pending = [work.remote(args.task_seconds) for _ in range(args.tasks)]
        sent = time.monotonic()  # the times printed below count from here
        print(f"sent {args.tasks} tasks of 1 CPU; the head offers none, so the autoscaler adds cpu_worker nodes")
        wanted = min(args.tasks, cluster.node_types["cpu_worker"].max_workers)

        def joined(counts: dict[str, int]) -> bool:  # all the nodes it may add, or the tasks are done anyway
            return (
                counts.get("cpu_worker", 0) >= wanted or not ray.wait(pending, num_returns=len(pending), timeout=0)[1]
            )

        watch(cluster, joined, args.timeout_s, sent)
        nodes = ray.get(pending, timeout=args.timeout_s)
        print(f"\ntasks done on {len(set(nodes))} worker node(s); waiting for the idle timeout", flush=True)
        watch(cluster, lambda counts: set(counts) == {HEAD_TYPE}, args.timeout_s, sent)
        print(f"\nback to the head alone {time.monotonic() - sent:.0f} s after the tasks were sent")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
