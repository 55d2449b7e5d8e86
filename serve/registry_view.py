"""The studio's Model section, server side: the served model's registered versions, their aliases and the
held-out metrics the evaluation gate logged on their runs (``eval/...``), read from MLflow (blocking), and
each version's evaluation report (``evaluation/report.html`` of the run that produced it, with the wavs and
PNGs beside it).

A report opens in a browser tab, which cannot send the bearer key, so the registry view (a request that did
carry it) hands out report links that carry their own proof: ``/v1/registry/{version}/evaluation/{token}/``
with ``token = expiry-HMAC(api key, version, expiry)``, good for ``REPORT_LINK_TTL_S`` and for that version's
``evaluation/`` files only. The report's relative links (``item00.png``) resolve inside that folder. Without
an API key every route is open and the token is ``open``.
"""

from __future__ import annotations

import hashlib
import hmac
import tempfile
import time
from pathlib import Path

from serve.http_errors import ApiError
from serve.schemas import RegistryVersion, RegistryView

EVAL_METRIC_PREFIX = "eval/"
MAX_VERSIONS = 50
REPORT_FOLDER = "evaluation"
REPORT_FILE = "report.html"
REPORT_LINK_TTL_S = 12 * 3600
OPEN_TOKEN = "open"
REPORT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".wav": "audio/wav",
    ".md": "text/markdown; charset=utf-8",
    ".json": "application/json",
}


def registry_view(name: str, tracking_uri: str | None, api_key: str | None = None) -> RegistryView:
    """Newest version first; ``tracking_uri`` None is MLflow's default (``MLFLOW_TRACKING_URI``); report links
    are signed with ``api_key``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(
        f"name = '{name}'", max_results=MAX_VERSIONS, order_by=["version_number DESC"]
    )
    views = []
    for v in versions:
        metrics = held_out_metrics(client, v.run_id)
        report = bool(metrics) and has_report(client, v.run_id)  # the gate logs both, together
        views.append(
            RegistryVersion(
                version=str(v.version),
                aliases=sorted(aliases.get(str(v.version), [])),
                run_id=v.run_id,
                created_at=v.creation_timestamp / 1000,
                status=str(v.status),
                metrics=metrics,
                tags=dict(v.tags or {}),
                report=report_link(api_key, str(v.version)) if report else None,
            )
        )
    return RegistryView(name=name, versions=views)


def held_out_metrics(client, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    metrics = client.get_run(run_id).data.metrics
    return {key: float(value) for key, value in sorted(metrics.items()) if key.startswith(EVAL_METRIC_PREFIX)}


def has_report(client, run_id: str) -> bool:
    return any(a.path == f"{REPORT_FOLDER}/{REPORT_FILE}" for a in client.list_artifacts(run_id, REPORT_FOLDER))


# ---------------------------------------------------------------- signed report links


def _signature(api_key: str, version: str, expires: int) -> str:
    key = hashlib.sha256(f"flowtts-report-link:{api_key}".encode()).digest()
    return hmac.new(key, f"{version}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def report_token(api_key: str | None, version: str, now: float | None = None) -> str:
    if api_key is None:
        return OPEN_TOKEN
    expires = int(now if now is not None else time.time()) + REPORT_LINK_TTL_S
    return f"{expires}-{_signature(api_key, version, expires)}"


def report_link(api_key: str | None, version: str) -> str:
    """The path of a version's ``report.html``, signed for ``REPORT_LINK_TTL_S``."""
    return f"/v1/registry/{version}/{REPORT_FOLDER}/{report_token(api_key, version)}/{REPORT_FILE}"


def check_report_token(api_key: str | None, version: str, token: str, now: float | None = None) -> None:
    """401 unless ``token`` is a live link token of ``version`` (any token when there is no API key)."""
    if api_key is None:
        return
    expires, _, signature = token.partition("-")
    valid = expires.isdigit() and hmac.compare_digest(signature, _signature(api_key, version, int(expires)))
    if not valid or int(expires) < (now if now is not None else time.time()):
        raise ApiError(
            401, "unauthorized", "this report link is wrong or expired: open the report again from the studio's Model"
        )


def evaluation_file(name: str, version: str, filename: str, tracking_uri: str | None) -> tuple[bytes, str]:
    """(bytes, content type) of ``evaluation/<filename>`` of the run of version ``version`` of ``name``; 404
    for a path, an unknown kind of file, or a file the run does not have."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    suffix = Path(filename).suffix
    if "/" in filename or "\\" in filename or filename.startswith(".") or suffix not in REPORT_TYPES:
        raise ApiError(404, "not_found", f"an evaluation report has no file {filename!r}")
    client = MlflowClient(tracking_uri, tracking_uri)
    try:
        run_id = client.get_model_version(name, version).run_id
        with tempfile.TemporaryDirectory(prefix="flowtts-report-") as folder:
            local = download_artifacts(
                run_id=run_id, artifact_path=f"{REPORT_FOLDER}/{filename}", dst_path=folder, tracking_uri=tracking_uri
            )
            return Path(local).read_bytes(), REPORT_TYPES[suffix]
    except (MlflowException, OSError) as exc:
        raise ApiError(
            404, "report_not_found", f"version {version} of {name} has no {REPORT_FOLDER}/{filename} ({exc})"
        ) from exc
