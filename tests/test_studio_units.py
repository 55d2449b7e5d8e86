"""Fast tests of the studio's server side without Ray: the page's files, the training command line (read back
by ``jobs/train.py``'s own parser), the settings' rule, and the registry view on a real (sqlite) MLflow."""

from __future__ import annotations

import importlib.util
import json
import re
import time

import mlflow
import pytest
from local_services import free_ports

from serve.http_errors import ApiError
from serve.registry_view import (
    REPORT_LINK_TTL_S,
    check_report_token,
    evaluation_file,
    registry_view,
    report_link,
)
from serve.schemas import TrainRequest
from serve.settings import ServeSettings, TrainingSettings
from serve.studio_routes import STUDIO_FOLDER, studio_file
from serve.training_jobs import TrainingJobs, registered_version, tail, train_command
from tests.helpers import REPO
from tests.helpers.models import save_tiny_model
from tests.helpers.registry import register_checkpoints


def train_job_parser():
    """``parse_args`` of ``jobs/train.py`` (a script, not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location("studio_units_train_job", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args


def test_every_file_the_page_loads_is_served_and_nothing_else():
    index = studio_file("index.html")
    assert index.media_type == "text/html; charset=utf-8"
    html = index.body.decode()
    for name in ("studio.css", "studio.js"):
        assert f"/studio/{name}" in html
    modules = sorted(p.name for p in STUDIO_FOLDER.glob("*.js"))
    imported = {"studio.js"} | {
        line.split('"./')[1].split('"')[0]
        for p in STUDIO_FOLDER.glob("*.js")
        for line in p.read_text().splitlines()
        if line.startswith("import ") and '"./' in line
    }
    assert sorted(imported) == modules  # every module is used, every import exists
    assert studio_file("api.js").media_type.startswith("text/javascript")
    for bad in ("../settings.py", "..\\settings.py", "missing.js", "index.py", "studio"):
        with pytest.raises(ApiError) as caught:
            studio_file(bad)
        assert caught.value.status == 404
    assert not re.search(
        r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", "".join(p.read_text() for p in STUDIO_FOLDER.iterdir())
    )


def test_a_train_request_becomes_a_command_line_jobs_train_accepts():
    request = TrainRequest(
        data="s3://bucket/ds",
        preset="tiny",
        init_from="/models/base",
        max_steps=50,
        learning_rate=2e-4,
        overrides={"train.batch_size_per_gpu": 1500, "train.log_samples_per_updates": 0},
    )
    settings = TrainingSettings(enabled=True, storage="/runs", cpus_per_worker=0.25)
    command = train_command(request, "studio-20260101-000000-abcdef", settings, "flowtts-vi")
    assert command[:2] == ["python", "jobs/train.py"]
    job = train_job_parser()(command[2:])
    assert (job.config, job.data, job.name, job.max_steps, job.checkpoint_every) == (
        "tiny",
        "s3://bucket/ds",
        "studio-20260101-000000-abcdef",
        50,
        50,
    )
    assert (job.workers, job.cpus_per_worker, str(job.storage), str(job.init_from)) == (
        1,
        0.25,
        "/runs",
        "/models/base",
    )
    assert (job.registered_model, job.experiment) == ("flowtts-vi", "flowtts")
    assert job.overrides == {
        "train.batch_size_per_gpu": 1500,
        "train.log_samples_per_updates": 0,
        "train.learning_rate": 2e-4,
    }
    with pytest.raises(ApiError, match="preset 'huge' is not one of"):
        train_command(request.model_copy(update={"preset": "huge"}), "x", settings, "m")


def test_train_requests_refuse_odd_override_keys_and_steps():
    with pytest.raises(ValueError, match="must look like section.field"):
        TrainRequest(data="/d", overrides={"train.lr; rm -rf /": 1})
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TrainRequest(data="/d", max_steps=0)


def test_training_needs_the_api_key():
    with pytest.raises(ValueError, match="training.enabled needs api_key"):
        ServeSettings.from_args({"training": {"enabled": True}}, environ={})
    settings = ServeSettings.from_args({"training": {"enabled": True}}, environ={"FLOWTTS_API_KEY": "k"})
    assert settings.training.enabled and settings.training.experiment == "flowtts"


def test_an_unreachable_jobs_api_is_a_503_in_words():
    (port,) = free_ports(1)  # nothing listens there
    jobs = TrainingJobs(TrainingSettings(enabled=True, ray_address=f"http://127.0.0.1:{port}"), None)
    with pytest.raises(ApiError) as caught:
        jobs.list()
    assert caught.value.status == 503 and caught.value.code == "jobs_api_unavailable"
    assert f"127.0.0.1:{port}" in caught.value.message


def test_the_registered_version_is_read_from_the_jobs_summary_line():
    summary = {"name": "studio-x", "step": 2, "loss": 1.5, "model_uri": "models:/m@candidate", "model_version": "7"}
    logs = "INFO step 1\n" + json.dumps(summary) + "\n"
    assert registered_version(logs) == "7"
    assert registered_version("INFO still training\n") is None
    assert tail("\n".join(str(i) for i in range(100)), 3) == "97\n98\n99"


def test_registry_view_lists_versions_aliases_held_out_metrics_and_signed_report_links(tmp_path):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    texts = ["xin chào"]
    folders = [save_tiny_model(tmp_path / f"v{i}" / "checkpoint", texts, i) for i in (1, 2)]
    register_checkpoints(tracking, tmp_path / "artifacts", folders, "studio-units")
    client = mlflow.MlflowClient(tracking, tracking)
    client.set_registered_model_alias("studio-units", "production", "1")
    client.set_registered_model_alias("studio-units", "candidate", "2")
    client.set_model_version_tag("studio-units", "2", "promotion.production.decision", "rejected")
    run_id = client.get_model_version("studio-units", "2").run_id
    client.log_metric(run_id, "eval/model/truth/mcd_dtw", 7.25)
    client.log_metric(run_id, "loss", 1.0)
    report = tmp_path / "evaluation"
    report.mkdir()
    (report / "report.html").write_text('<img src="item00.png">', encoding="utf-8")
    (report / "item00.png").write_bytes(b"\x89PNG")
    client.log_artifacts(run_id, str(report), "evaluation")

    view = registry_view("studio-units", tracking, api_key="k")
    assert [v.version for v in view.versions] == ["2", "1"]
    newest, oldest = view.versions
    assert newest.aliases == ["candidate"] and oldest.aliases == ["production"]
    assert newest.metrics == {"eval/model/truth/mcd_dtw": 7.25}  # held-out metrics only, not the training loss
    assert newest.tags["promotion.production.decision"] == "rejected" and oldest.metrics == {}
    assert oldest.report is None  # not evaluated
    prefix, token, name = newest.report.rsplit("/", 2)
    assert (prefix, name) == ("/v1/registry/2/evaluation", "report.html")
    check_report_token("k", "2", token)  # good for this version, with this key, for a while
    for key, version, at in (("other", "2", None), ("k", "1", None), ("k", "2", time.time() + REPORT_LINK_TTL_S + 5)):
        with pytest.raises(ApiError) as caught:
            check_report_token(key, version, token, now=at)
        assert caught.value.status == 401
    assert report_link(None, "2") == "/v1/registry/2/evaluation/open/report.html"  # no key: every route is open
    assert evaluation_file("studio-units", "2", "report.html", tracking) == (
        b'<img src="item00.png">',
        "text/html; charset=utf-8",
    )
    assert evaluation_file("studio-units", "2", "item00.png", tracking)[1] == "image/png"
    for missing, code in (("scores.json", "report_not_found"), ("../mlflow.db", "not_found")):
        with pytest.raises(ApiError) as caught:
            evaluation_file("studio-units", "2", missing, tracking)
        assert (caught.value.status, caught.value.code) == (404, code)
