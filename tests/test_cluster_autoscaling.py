"""The platform on a multi-node, autoscaling Ray cluster (Ray's fake multi-node provider, started by
``scripts/local_cluster.py``): worker nodes are real raylets that the Ray autoscaler launches from zero and
terminates when idle. Issue 26's scenarios; here: preprocessing fans out onto ``cpu_worker`` nodes."""

from __future__ import annotations

import time

import pytest
import yaml
from local_cluster import FAKE_GPU, HEAD_TYPE, NODE_TYPES, LocalAutoscalingCluster
from local_services import _alive, service_env

from data_pipelines import PreprocessConfig, preprocess_corpus
from flowtts.storage import resolve
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.locations import shard_bytes, upload

pytestmark = pytest.mark.integration
OPTIONS = {"holdout_fraction": 0.2, "shard_mb": 0.5}  # several shards and a held-out split to compare


def test_node_types_mirror_cluster_yaml():
    """The local types are cluster.yaml's worker types by name; a GPU type's GPUs become ``fake_gpu`` and its
    accelerator resource is kept, so what asks for an accelerator type lands on the same type of node."""
    declared = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]
    workers = {name: spec["resources"] for name, spec in declared.items() if name != "head"}
    assert set(NODE_TYPES) == set(workers)
    for name, resources in workers.items():
        local = NODE_TYPES[name].resources
        assert "GPU" not in local and local.get(FAKE_GPU, 0) == resources.get("GPU", 0), name
        accelerators = {key for key in resources if key.startswith("accelerator_type:")}
        assert accelerators == {key for key in local if key.startswith("accelerator_type:")}, name
        assert 0 < local["CPU"] <= resources["CPU"] and NODE_TYPES[name].min_workers == 0, name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with no CPUs for tasks (every task needs a worker node) and no AWS variables (jobs bring them in
    their runtime_env); afterwards, no process of the cluster (head, fake nodes' raylets, workers) is left."""
    root = tmp_path_factory.mktemp("cluster")
    env = {key: value for key, value in service_env().items() if not key.startswith("AWS_")}
    cluster = LocalAutoscalingCluster(env=env, head_cpus=0, idle_timeout_minutes=0.1, log=root / "ray_head.log")
    seen: set[int] = set()
    try:
        cluster.start()
        yield cluster
        seen = set(cluster.processes())
    finally:
        cluster.stop()
    deadline = time.monotonic() + 30  # killed processes may be exiting (zombies) for a moment
    while (left := [pid for pid in seen | set(cluster.processes()) if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen and not left, f"processes of the cluster outlived stop(): {left}"


def test_preprocessing_fans_out_onto_cpu_workers_and_equals_a_single_node_run(
    cluster, ray_local, s3_server, s3_bucket, tmp_path
):
    """``jobs/preprocess.py`` s3 -> s3 through ``ray job submit``: the autoscaler launches a ``cpu_worker``
    (the head offers no CPU), the mel tasks run there, the dataset is byte for byte the one a single-node run
    writes, and the idle node goes away again."""
    from ray.util.state import list_tasks

    corpus = upload(SAMPLE_CORPUS, resolve(f"{s3_bucket}/corpus"))
    out = resolve(f"{s3_bucket}/data")
    assert cluster.nodes("cpu_worker") == []  # min_workers 0: nothing runs before there is demand
    options = ["--holdout-fraction", str(OPTIONS["holdout_fraction"]), "--shard-mb", str(OPTIONS["shard_mb"])]
    entrypoint = ["python", "jobs/preprocess.py", "--corpus", corpus.uri, "--out", out.uri, "--num-workers", "2"]
    submitted_ms = time.time() * 1000
    logs = cluster.submit(*entrypoint, *options, cwd=REPO, env_vars=s3_server, timeout_s=600)

    workers = cluster.nodes("cpu_worker", alive=False)  # the job is over: the node may be leaving already
    assert workers, cluster.status()
    for node in workers:
        assert not node.is_head_node and node.resources_total.get("CPU") == NODE_TYPES["cpu_worker"].resources["CPU"]
        assert node.start_time_ms > submitted_ms  # launched for this job, not there before
    print(f"first cpu_worker joined {(min(n.start_time_ms for n in workers) - submitted_ms) / 1000:.1f} s after submit")
    (head,) = cluster.nodes(HEAD_TYPE)
    assert "CPU" not in head.resources_total
    tasks = [t for t in list_tasks(address=cluster.address, detail=True, limit=10000) if "process_batch" in t.name]
    assert tasks and {t.node_id for t in tasks} <= {n.node_id for n in workers}, [(t.name, t.node_id) for t in tasks]

    single = preprocess_corpus(PreprocessConfig(corpus=SAMPLE_CORPUS, out=tmp_path / "single", **OPTIONS))
    assert single.heldout > 0
    assert f"kept {single.kept}, held out {single.heldout}, rejected {single.rejected} of {single.rows_read}" in logs
    local = resolve(tmp_path / "single")
    shards = shard_bytes(out)
    assert len(shards) > 2 and shards == shard_bytes(local)  # same rows, same shard bytes
    for name in ("vocab.txt", "rejected.jsonl"):
        assert out.join(name).read_bytes() == local.join(name).read_bytes(), name

    cluster.wait_for_nodes("cpu_worker", 0, timeout_s=120)  # idle_timeout_minutes 0.1: scaled in again
    assert [node.labels for node in cluster.nodes()] == [head.labels]
