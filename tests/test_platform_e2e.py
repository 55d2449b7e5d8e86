"""The whole platform the way a user runs it, on real services this module starts and stops by PID:
an ``mlflow server`` (sqlite + artifact folder) and a ``ray start --head`` cluster on free ports.

Preprocessing of the shipped sample corpus, training and the evaluation gate run as ``ray job submit``
jobs; the run, its metrics, the registered version, its aliases and tags are checked through the MLflow
REST API; ``serve deploy`` serves the ``production`` alias and answers real HTTP requests.

Every Python process of it (the services, job drivers, Ray workers, Serve replicas) runs with
``tests/helpers/netguard`` on ``PYTHONPATH``, which records each connection and name lookup it makes; the
last test checks that none of them left loopback (nothing phones home: ``flowtts.usage_reporting``).
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
import requests
import soundfile as sf
from local_services import LocalMlflowServer, LocalRayHead, free_ports, service_env, wait_until_answers

from flowtts.usage_reporting import usage_reporting_off
from tests.helpers import REPO, SAMPLE_CORPUS
from tests.helpers.network import goes_outside, is_ray_metadata_probe, read_records, recorded_env
from tests.helpers.serving import small_serve_config

pytestmark = pytest.mark.integration

MODEL = "flowtts-e2e"
STEPS = 4


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    netlog = root / "netguard"
    mlflow_server = LocalMlflowServer(root / "mlflow", env=recorded_env(service_env(), netlog))
    tracking_uri = mlflow_server.start()
    env = service_env(
        MLFLOW_TRACKING_URI=tracking_uri,
        FLOWTTS_MODEL_URI=f"models:/{MODEL}@production",
        FLOWTTS_VOICES_URI=str(root / "voices"),
    )
    env = recorded_env(env, netlog)
    head = LocalRayHead(env=env, log=root / "ray_head.log")
    started = [mlflow_server.process.pid]
    try:
        head.start()
        started.append(head.process.pid)
        yield {"root": root, "head": head, "mlflow": tracking_uri, "netlog": netlog}
    finally:
        head.stop()
        mlflow_server.stop()
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()], "a service outlived its stop()"


def rest(tracking_uri: str, endpoint: str, **params) -> dict:
    response = requests.get(f"{tracking_uri}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_preprocess_train_evaluate_promote_and_serve(platform):
    head, tracking_uri, root = platform["head"], platform["mlflow"], platform["root"]
    data = root / "data"

    # the shipped sample corpus preprocesses with zero rejections (2 speakers: the held-out split is stratified)
    logs = head.submit(
        "python",
        "jobs/preprocess.py",
        "--corpus",
        str(SAMPLE_CORPUS),
        "--out",
        str(data),
        "--holdout-fraction",
        "0.1",
        cwd=REPO,
    )
    assert "kept 44, held out 4, rejected 0 of 48 rows" in logs, logs[-3000:]
    assert (data / "rejected.jsonl").read_text() == ""

    logs = head.submit(
        "python",
        "jobs/train.py",
        "--config",
        "tiny",
        "--data",
        str(data),
        "--name",
        "e2e",
        "--storage",
        str(root / "ray_train"),
        "--max-steps",
        str(STEPS),
        "--checkpoint-every",
        str(STEPS),
        "--log-every",
        "1",
        "--sample-steps",
        "2",
        "--registered-model",
        MODEL,
        "--duration-predictor",
        "--set",
        "train.batch_size_per_gpu=1500",
        "--set",
        "train.log_samples_per_updates=2",
        cwd=REPO,
    )
    summary = json.loads(re.findall(r'^\{"name": "e2e".*\}$', logs, flags=re.M)[-1])
    assert summary["tracking_uri"] == tracking_uri and summary["model_uri"] == f"models:/{MODEL}@candidate"

    run = rest(tracking_uri, "runs/get", run_id=summary["mlflow_run_id"])["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.batch_size_per_gpu"] == "1500"
    for key in ("loss", "duration_loss"):
        history = rest(tracking_uri, "metrics/get-history", run_id=summary["mlflow_run_id"], metric_key=key)
        assert sorted(m["step"] for m in history["metrics"]) == list(range(1, STEPS + 1)), key
    samples = rest(tracking_uri, "artifacts/list", run_id=summary["mlflow_run_id"], path="samples")
    assert "samples/step_0000002.wav" in {f["path"] for f in samples["files"]}
    version = rest(tracking_uri, "registered-models/alias", name=MODEL, alias="candidate")["model_version"]
    assert version["version"] == summary["model_version"] == "1"
    assert version["run_id"] == summary["mlflow_run_id"]

    # the gate: no version has `production` yet, so the evaluated candidate is promoted
    logs = head.submit(
        "python",
        "jobs/evaluate.py",
        "--model",
        f"models:/{MODEL}@candidate",
        "--data",
        str(data),
        "--promote",
        "production",
        "--max-items",
        "2",
        "--nfe",
        "2",
        cwd=REPO,
    )
    assert "production: promoted" in logs, logs[-3000:]
    promoted = rest(tracking_uri, "registered-models/alias", name=MODEL, alias="production")["model_version"]
    assert promoted["version"] == "1"
    assert {t["key"]: t["value"] for t in promoted["tags"]}["promotion.production.decision"] == "promoted"
    metrics = {
        m["key"] for m in rest(tracking_uri, "runs/get", run_id=summary["mlflow_run_id"])["run"]["data"]["metrics"]
    }
    assert {"eval/model/truth/mcd_dtw", "eval/untrained/truth/mcd_dtw", "eval/other_sentence/truth/mcd_dtw"} <= metrics
    report = rest(tracking_uri, "artifacts/list", run_id=summary["mlflow_run_id"], path="evaluation")
    assert "evaluation/report.md" in {f["path"] for f in report["files"]}

    # serve deploy of models:/NAME@production (the replicas inherit the head's MLflow URI)
    (port,) = free_ports(1)
    head.serve_deploy(small_serve_config(root, port))
    url = f"http://127.0.0.1:{port}"
    assert json.loads(wait_until_answers(f"{url}/readyz", timeout_s=300))["model_version"] == f"{MODEL}/1"
    card = requests.get(f"{url}/v1/models", timeout=30).json()["data"][0]
    assert (card["name"], card["version"], card["alias"], card["run_id"]) == (
        MODEL,
        "1",
        "production",
        summary["mlflow_run_id"],
    )

    ref_line, text_line = (SAMPLE_CORPUS / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:3]
    ref_file, ref_text = ref_line.split("|", 1)
    body = {
        "text": text_line.split("|", 1)[1],
        "ref_text": ref_text,
        "seed": 3,
        "response_format": "wav",
        "ref_audio": base64.b64encode((SAMPLE_CORPUS / ref_file).read_bytes()).decode(),
    }
    response = requests.post(f"{url}/v1/tts", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == f"{MODEL}/1"
    assert response.headers["X-Duration-Rule"] == "predictor"  # the model trained one jointly
    audio, rate = sf.read(io.BytesIO(response.content))
    assert rate == 24000 and audio.shape[0] > 24000 // 2 and abs(audio).max() > 0

    bad = requests.post(f"{url}/v1/tts", json={**body, "nfe": 1000}, timeout=60)
    assert bad.status_code == 422 and bad.json()["error"]["message"]


def test_nothing_left_loopback(platform):
    """Runs after the scenario above: every process it reached recorded itself, started with usage reporting
    off, and named no host or address beyond loopback in a connection or a lookup."""
    records = read_records(platform["netlog"])
    starts = [r for r in records if r["kind"] == "start"]
    commands = [r["cmdline"] for r in records]
    # the recorder reached the services, the job drivers, Ray workers and the Serve replicas
    assert any(" server " in c and "mlflow" in c for c in commands), "no record of the mlflow server"
    for name in ("jobs/preprocess.py", "jobs/train.py", "jobs/evaluate.py", "default_worker.py", "ServeReplica"):
        assert any(name in c for c in commands), f"no record of a {name} process"
    assert all(r["env"] == usage_reporting_off({}) for r in starts), [
        (r["cmdline"][:120], r["env"]) for r in starts if r["env"] != starts[0]["env"]
    ]
    assert any(r["kind"] != "start" for r in records)  # connections were recorded (MLflow's REST calls, ...)
    outside = [r for r in records if goes_outside(r)]
    probes = [r for r in outside if is_ray_metadata_probe(r)]
    assert not [r for r in outside if r not in probes], outside[:20]
