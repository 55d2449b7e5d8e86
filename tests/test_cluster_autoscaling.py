"""The platform on a multi-node, autoscaling Ray cluster (Ray's fake multi-node provider, started by
``scripts/local_cluster.py``): worker nodes are real raylets that the Ray autoscaler launches from zero and
terminates when idle. Issue 26's scenarios: preprocessing fans out onto ``cpu_worker`` nodes; training with one
worker per node survives the loss of a node (SIGKILL of its raylet and processes) on a node the autoscaler
launches, resuming from its checkpoint in S3."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from local_cluster import FAKE_GPU, HEAD_TYPE, NODE_TYPES, LocalAutoscalingCluster
from local_services import LocalMlflowServer, _alive, service_env
from mlflow.tracking import MlflowClient

from data_pipelines import PreprocessConfig, preprocess_corpus
from flowtts.storage import resolve
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.locations import shard_bytes, upload
from tests.helpers.registry import attempt_records
from tests.helpers.shards import copy_dataset, write_dataset

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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The head's ``mlflow server`` (runs, artifacts, registry): what every node reaches over the network."""
    server = LocalMlflowServer(tmp_path_factory.mktemp("mlflow"), env=service_env())
    yield server.start()
    server.stop()


def wait_until(condition, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s")
        time.sleep(0.5)
    return value


def train_workers(cluster) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return list_actors(address=cluster.address, filters=filters, detail=True, raise_on_missing_output=False)


def test_training_survives_the_loss_of_a_node_and_resumes_from_s3(
    cluster, ray_local, s3_server, s3_bucket, mlflow_server, tmp_path
):
    """``jobs/train.py --workers 2 --placement strict_spread``: one DDP worker (gloo) per autoscaled node,
    checkpoints in S3. After the first checkpoint one worker's node is killed; Ray Train restarts the group on a
    node the autoscaler launches, from the checkpoint in S3: each step is logged once and one version registered."""
    data = copy_dataset(write_dataset(tmp_path / "ds", SAMPLE_CORPUS, count=8, heldout=1), f"{s3_bucket}/data")
    storage, name, steps = f"{s3_bucket}/runs", "across-nodes", 6
    entrypoint = ["python", "jobs/train.py", "--config", "tiny", "--data", data, "--storage", storage]
    entrypoint += ["--name", name, "--workers", "2", "--placement", "strict_spread", "--cpus-per-worker", "1"]
    entrypoint += ["--max-steps", str(steps), "--checkpoint-every", "2", "--log-every", "1"]
    entrypoint += ["--registered-model", "across-nodes", "--set", "train.batch_size_per_gpu=1000"]
    entrypoint += ["--set", "train.max_samples=4", "--set", "train.log_samples_per_updates=0"]
    env_vars = {**s3_server, "MLFLOW_TRACKING_URI": mlflow_server}
    outcome: dict = {}

    def submit() -> None:
        try:
            outcome["logs"] = cluster.submit(*entrypoint, cwd=REPO, env_vars=env_vars, timeout_s=900)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    head_before = cluster.head_rss_mb()
    submitted = time.time()
    runner = threading.Thread(target=submit, daemon=True)
    runner.start()
    snapshot = resolve(f"{storage}/{name}/checkpoint_manager_snapshot.json")  # Ray Train's registered checkpoints

    def first_checkpoint_registered() -> bool:
        return "error" in outcome or (snapshot.exists() and "checkpoint_00000002" in snapshot.read_text())

    wait_until(first_checkpoint_registered, "the first checkpoint, uploaded to S3 and registered", 600)
    assert "error" not in outcome, outcome.get("error")
    workers = wait_until(lambda: len(found := train_workers(cluster)) == 2 and found, "two train workers", 120)
    assert len({w.node_id for w in workers}) == 2  # strict_spread: one worker per node
    killed_at = time.time()
    cluster.kill_node(workers[0].node_id)
    runner.join(900)
    assert "logs" in outcome, outcome.get("error")
    joined = [n.start_time_ms / 1000 for n in cluster.nodes(alive=False) if n.start_time_ms / 1000 > submitted]
    print(f"first train node joined {min(joined) - submitted:.1f} s after submit")

    nodes = {n.node_id: n for n in cluster.nodes(alive=False)}
    assert nodes[workers[0].node_id].state == "DEAD"
    joined_after = [n for n in nodes.values() if not n.is_head_node and n.start_time_ms / 1000 > killed_at]
    assert joined_after, cluster.status()  # the group was restored on a node launched after the loss

    client = MlflowClient(mlflow_server)
    (version,) = client.search_model_versions("name='across-nodes'")  # exactly one version registered
    logged = sorted(m.step for m in client.get_metric_history(version.run_id, "loss"))
    records = attempt_records(mlflow_server, version.run_id)
    (restart,) = sorted(step for step in records if step > 0)  # one restart, at a checkpoint: not from step 0
    assert restart >= 2 and records[restart]["resumed"], records
    assert records[restart]["first_batch"] == records[restart]["checkpoint_next_batch"]  # the next batch, too
    assert set(logged) == set(range(1, steps + 1))
    # the updates up to the checkpoint ran once; only those after it (lost with the node) ran again
    assert [step for step in logged if step <= restart] == list(range(1, restart + 1)), logged
    assert not [p for p in tmp_path.rglob("s3:*")] and not (REPO / "s3:").exists()
    print(f"training resumed {records[restart]['started_at'] - killed_at:.1f} s after the node was killed")
    print(f"head processes' RSS: {head_before:.0f} MiB before the job, {cluster.head_rss_mb():.0f} MiB after it")
