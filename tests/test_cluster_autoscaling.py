"""The platform on a multi-node, autoscaling Ray cluster (Ray's fake multi-node provider, started by
``scripts/local_cluster.py``): worker nodes are real raylets that the Ray autoscaler launches from zero and
terminates when idle. Issue 26's scenarios, on one cluster for the module: preprocessing fans out onto
``cpu_worker`` nodes; training with one worker per node survives the loss of a node (SIGKILL of its raylet and
processes), an interrupted ``ray job submit`` client and a killed driver, resuming from its checkpoint in S3;
Serve scales out onto new nodes under load, survives the loss of one, and scales in again."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from local_cluster import FAKE_GPU, HEAD_TYPE, NODE_TYPE_LABEL, NODE_TYPES, LocalAutoscalingCluster
from local_services import (
    LocalMlflowServer,
    _alive,
    _pids,
    _read,
    free_ports,
    service_env,
    wait_until_answers,
)
from mlflow.tracking import MlflowClient

from data_pipelines import PreprocessConfig, preprocess_corpus
from flowtts.storage import resolve
from flowtts.synthesis import init_vocos_folder
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.locations import shard_bytes, upload
from tests.helpers.models import save_tiny_model
from tests.helpers.registry import attempt_records, register_checkpoints
from tests.helpers.serving import small_serve_config
from tests.helpers.shards import copy_dataset, write_dataset

pytestmark = pytest.mark.integration
OPTIONS = {"holdout_fraction": 0.2, "shard_mb": 0.5}  # several shards and a held-out split to compare
ROWS = [line.split("|", 1) for line in (SAMPLE_CORPUS / "metadata.csv").read_text("utf-8").splitlines()[1:]]


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


def test_make_cluster_up_keeps_the_cluster_for_other_jobs_until_ctrl_c():
    """``make cluster-up`` (``scripts/cluster_demo.py --tasks 0 --keep``) starts the cluster, prints how to
    reach it (the printed ``ray status`` works and shows the head alone, with the worker types at zero) and
    keeps it until Ctrl-C, which stops every process of it."""
    demo = subprocess.Popen(
        [sys.executable, "-u", "scripts/cluster_demo.py", "--tasks", "0", "--keep"],
        cwd=REPO,
        env=service_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True).start()
    printed: list[str] = []

    def read_until(text: str) -> None:
        while not any(text in line for line in printed):
            printed.append(lines.get(timeout=180))  # queue.Empty if the demo says nothing for that long

    try:
        read_until("ray status --address")
        (status,) = [line.strip() for line in printed if "ray status --address" in line]
        shown = subprocess.run(status, shell=True, env=service_env(), capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and HEAD_TYPE in shown.stdout, shown.stdout + shown.stderr
        assert "cpu_worker" not in shown.stdout.split("Pending:")[0]  # no worker before there is demand
        assert demo.poll() is None  # still up
        demo.send_signal(signal.SIGINT)
        read_until("processes of the cluster left")
        assert demo.wait(timeout=120) == 0 and "processes of the cluster left: none" in printed[-1], printed
    finally:
        if demo.poll() is None:  # a failed check: stop the cluster as a user would
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=120)


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


MODEL_NODE_TYPES = {name for name, kind in NODE_TYPES.items() if FAKE_GPU in kind.resources}


def cluster_serve_config(folder, port: int, env_vars: dict[str, str], **args) -> object:
    """``serve/config.yaml`` for the local cluster: model replicas that need a GPU-like node (``fake_gpu``, as
    cluster.yaml's replicas need a GPU) and scale 1..2 on one request in flight each, within seconds; the ingress
    and the one HTTP proxy on the head (every fake node shares this machine's ports, so a proxy per node would
    fight over one port)."""
    path = small_serve_config(folder, port, **args)
    config = yaml.safe_load(path.read_text())
    config["proxy_location"] = "HeadOnly"
    (app,) = config["applications"]
    # the handles in the ingress report load every second (Ray's default: 10 s)
    app["runtime_env"] = {"env_vars": {**env_vars, "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}}
    model, ingress = app["deployments"]
    model["ray_actor_options"] = {"num_cpus": 0.5, "resources": {FAKE_GPU: 1}}
    model["autoscaling_config"] = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 5,
        "look_back_period_s": 2,
    }
    model.update(max_ongoing_requests=2, max_queued_requests=8, health_check_period_s=2, max_replicas_per_node=1)
    model["backpressure_config"]["retry_after_s"] = 1
    model["user_config"].update(max_batch_size=2, max_batch_frames=4096)
    ingress["ray_actor_options"] = {"num_cpus": 0}  # the head offers no CPU: 0 keeps it there
    path.write_text(yaml.safe_dump(config))
    return path


def model_replicas(cluster) -> list[dict]:
    """The running TTSModel replicas, as Serve's REST API lists them (with the node each is on)."""
    import requests

    apps = requests.get(f"{cluster.address}/api/serve/applications/", timeout=30).json()["applications"]
    replicas = apps.get("flowtts", {}).get("deployments", {}).get("TTSModel", {}).get("replicas", [])
    return [replica for replica in replicas if replica["state"] == "RUNNING"]


@pytest.fixture
def serve_shutdown(cluster):
    """After the test, Serve is shut down with every replica (the nodes they held go idle and leave)."""
    yield
    import requests

    requests.delete(f"{cluster.address}/api/serve/applications/", timeout=120).raise_for_status()


def test_serving_scales_out_onto_new_nodes_survives_losing_one_and_scales_in(
    cluster, s3_server, s3_bucket, mlflow_server, serve_shutdown, tmp_path
):
    """``serve deploy`` of a registered model (from the head's MLflow server) with its Vocos and the voices on
    S3: one replica on one GPU-like node; a load above its target adds a replica and the autoscaler a node for
    it; SIGKILL of a node that holds a replica under load costs only 503/429 with ``Retry-After`` and 200s
    follow within 60 s; once the load stops, replicas and then nodes go away again."""
    import requests

    checkpoint = save_tiny_model(tmp_path / "checkpoint", [text for _, text in ROWS], 0)
    vocos = init_vocos_folder(tmp_path / "vocos", dim=32, intermediate_dim=64, num_layers=1)
    vocoder = upload(vocos, resolve(f"{s3_bucket}/vocos")).uri  # each replica downloads it on its node
    register_checkpoints(mlflow_server, None, [checkpoint], "served")
    MlflowClient(mlflow_server).set_registered_model_alias("served", "production", "1")
    (port,) = free_ports(1)
    config = cluster_serve_config(
        tmp_path,
        port,
        s3_server,
        model_uri="models:/served@production",
        tracking_uri=mlflow_server,
        voices_uri=f"{s3_bucket}/voices",
        vocoder=vocoder,
        default_nfe=2,
        limits={"nfe_range": [2, 4]},
    )
    deployed = time.time()
    cluster.head.serve_deploy(config)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{url}/readyz", timeout_s=300)
    ready = time.time() - deployed
    (first,) = model_replicas(cluster)
    nodes = {node.node_id: node for node in cluster.nodes()}
    assert nodes[first["node_id"]].labels[NODE_TYPE_LABEL] in MODEL_NODE_TYPES
    joined = nodes[first["node_id"]].start_time_ms / 1000 - deployed
    assert joined > 0  # the autoscaler launched it for the replica
    print(f"the first replica's node joined {joined:.1f} s after serve deploy, which was ready after {ready:.1f} s")

    voice = requests.post(
        f"{url}/v1/voices",
        files={"audio": ("ref.wav", (SAMPLE_CORPUS / ROWS[0][0]).read_bytes(), "audio/wav")},
        data={"transcript": ROWS[0][1], "name": "lan"},
        timeout=120,
    )
    assert voice.status_code == 201, voice.text
    assert resolve(f"{s3_bucket}/voices").files(recursive=True)  # stored on S3, where every replica reads it

    outcomes: list[tuple[float, object, str | None]] = []
    failures: list[str] = []  # the bodies of the answers that were not 200
    stop = threading.Event()

    def keep_requesting(worker: int) -> None:
        for index in range(10_000):
            if stop.is_set():
                return
            body = {"text": ROWS[1 + (worker + index) % 8][1][:40], "voice": "lan", "seed": index}
            try:
                response = requests.post(f"{url}/v1/tts", json=body, timeout=120)
                outcomes.append((time.time(), response.status_code, response.headers.get("Retry-After")))
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:500]}")
            except requests.RequestException as exc:  # a refused or dropped connection counts as a failure
                outcomes.append((time.time(), type(exc).__name__, None))

    clients = [threading.Thread(target=keep_requesting, args=(worker,), daemon=True) for worker in range(4)]
    load_started = time.time()
    for client in clients:
        client.start()
    try:
        scaled = wait_until(lambda: len(found := model_replicas(cluster)) == 2 and found, "a second replica", 300)
        scaled_out_at = time.time()
        assert len({replica["node_id"] for replica in scaled}) == 2  # each on a node of its own
        (added,) = [replica for replica in scaled if replica["node_id"] != first["node_id"]]
        (node,) = [node for node in cluster.nodes() if node.node_id == added["node_id"]]
        assert node.labels[NODE_TYPE_LABEL] in MODEL_NODE_TYPES and node.start_time_ms / 1000 > load_started
        assert cluster.nodes(HEAD_TYPE)[0].node_id not in {replica["node_id"] for replica in scaled}

        victim = added["node_id"]
        wait_until(lambda: any(t > scaled_out_at and s == 200 for t, s, _ in outcomes), "a 200 from 2 replicas", 120)
        killed_at = time.time()
        cluster.kill_node(victim)
        wait_until(lambda: any(t > killed_at + 1 and s == 200 for t, s, _ in outcomes), "a 200 after the kill", 60)

        def replaced() -> bool:  # Serve lists the lost replica as running until its health check fails
            found = model_replicas(cluster)
            return len(found) == 2 and victim not in {replica["node_id"] for replica in found}

        wait_until(replaced, "a replacement replica on another node", 300)
        replaced_at = time.time()
    finally:
        stop.set()
        for client in clients:
            client.join(180)
    stopped_at = time.time()
    wait_until(lambda: len(model_replicas(cluster)) == 1, "one replica after the load", 300)
    one_replica_at = time.time()
    wait_until(lambda: sum(len(cluster.nodes(kind)) for kind in MODEL_NODE_TYPES) == 1, "one model node", 300)
    one_node_at = time.time()

    after_kill = [(status, retry) for at, status, retry in outcomes if at >= killed_at]
    assert {status for _, status, _ in outcomes} <= {200, 429, 503}, failures
    assert all(retry for status, retry in after_kill if status != 200), after_kill
    assert sum(status == 200 for _, status, _ in outcomes) > 4
    counts = {status: sum(s == status for _, s, _ in outcomes) for status in (200, 429, 503)}
    print(
        f"serve 1 -> 2 replicas {scaled_out_at - load_started:.1f} s after the load started; first 200 "
        f"{min(t for t, s, _ in outcomes if t > killed_at + 1 and s == 200) - killed_at:.1f} s after the kill; "
        f"replacement running {replaced_at - killed_at:.1f} s after it; 2 -> 1 replicas "
        f"{one_replica_at - stopped_at:.1f} s and 2 -> 1 model nodes {one_node_at - stopped_at:.1f} s after the load "
        f"stopped; answers {counts}"
    )


def train_workers(cluster) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return list_actors(address=cluster.address, filters=filters, detail=True, raise_on_missing_output=False)


def processes_with(*words: str) -> list[int]:
    """PIDs of this machine's processes whose command line holds every word (a ``ray job submit`` client)."""
    return [pid for pid in _pids() if all(word in _read(pid, "cmdline").split("\0") for word in words)]


def test_training_survives_a_node_loss_a_lost_client_and_a_killed_driver_resuming_from_s3(
    cluster, ray_local, s3_server, s3_bucket, mlflow_server, tmp_path
):
    """``jobs/train.py --workers 2 --placement strict_spread`` through ``ray job submit``: one DDP worker (gloo)
    per autoscaled node, checkpoints in S3.

    1. After the first checkpoint one worker's node is killed: Ray Train restarts the group on a node the
       autoscaler launches, from the checkpoint in S3.
    2. The ``ray job submit`` client is interrupted (Ctrl-C): the job goes on and checkpoints again.
    3. The job's driver is SIGKILLed: the job fails; the same command, submitted again, resumes from the last
       checkpoint in S3 and finishes. Each update before a restart is logged once, one version is registered."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    data = copy_dataset(write_dataset(tmp_path / "ds", SAMPLE_CORPUS, count=8, heldout=1), f"{s3_bucket}/data")
    storage, name, steps = f"{s3_bucket}/runs", "across-nodes", 8
    entrypoint = ["python", "jobs/train.py", "--config", "tiny", "--data", data, "--storage", storage]
    entrypoint += ["--name", name, "--workers", "2", "--placement", "strict_spread", "--cpus-per-worker", "1"]
    entrypoint += ["--max-steps", str(steps), "--checkpoint-every", "2", "--log-every", "1"]
    entrypoint += ["--registered-model", "across-nodes", "--set", "train.batch_size_per_gpu=1000"]
    entrypoint += ["--set", "train.max_samples=4", "--set", "train.log_samples_per_updates=0"]
    env_vars = {**s3_server, "MLFLOW_TRACKING_URI": mlflow_server}
    jobs = JobSubmissionClient(cluster.address)
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

    def registered(step: int):
        def check() -> bool:
            assert "error" not in outcome, outcome["error"]
            return snapshot.exists() and f"checkpoint_{step:08d}" in snapshot.read_text()

        return check

    # 1. a node lost
    wait_until(registered(2), "the first checkpoint, uploaded to S3 and registered", 600)
    workers = wait_until(lambda: len(found := train_workers(cluster)) == 2 and found, "two train workers", 120)
    assert len({w.node_id for w in workers}) == 2  # strict_spread: one worker per node
    killed_at = time.time()
    cluster.kill_node(workers[0].node_id)
    # 2. the client interrupted
    (job,) = [j for j in jobs.list_jobs() if j.status == JobStatus.RUNNING and "jobs/train.py" in j.entrypoint]
    (client,) = processes_with("submit", cluster.address)
    os.kill(client, signal.SIGINT)
    wait_until(lambda: not _alive(client), "the interrupted client gone", 60)
    wait_until(registered(4), "a checkpoint after the node loss, with no client attached", 600)
    assert jobs.get_job_status(job.submission_id) == JobStatus.RUNNING
    # 3. the driver killed
    os.kill(int(jobs.get_job_info(job.submission_id).driver_info.pid), signal.SIGKILL)
    runner.join(300)
    assert "failed" in str(outcome.get("error")), outcome
    last = max(int(c) for c in re.findall(r"checkpoint_(\d{8})", snapshot.read_text()))
    assert last < steps, "the job finished before its driver was killed"
    resubmitted = time.time()
    cluster.submit(*entrypoint, cwd=REPO, env_vars=env_vars, timeout_s=900)
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
    restarts = sorted(step for step in records if step > 0)  # at checkpoints: never from step 0 again
    assert len(restarts) == 2 and restarts[0] >= 2 and restarts[1] == last, records
    for step in restarts:
        assert records[step]["resumed"] and records[step]["first_batch"] == records[step]["checkpoint_next_batch"]
    assert set(logged) == set(range(1, steps + 1))
    # the updates up to the first restart ran once; only those after a checkpoint (lost with it) ran again
    assert [step for step in logged if step <= restarts[0]] == list(range(1, restarts[0] + 1)), logged
    assert not [p for p in tmp_path.rglob("s3:*")] and not (REPO / "s3:").exists()
    print(f"training resumed {records[restarts[0]]['started_at'] - killed_at:.1f} s after the node was killed")
    print(f"the resubmitted job resumed {records[restarts[1]]['started_at'] - resubmitted:.1f} s after its submit")
    print(f"head processes' RSS: {head_before:.0f} MiB before the job, {cluster.head_rss_mb():.0f} MiB after it")
