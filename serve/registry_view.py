"""The studio's Model section, server side: the served model's registered versions, their aliases and the
held-out metrics the evaluation gate logged on their runs (``eval/...``), read from MLflow (blocking)."""

from __future__ import annotations

from serve.schemas import RegistryVersion, RegistryView

EVAL_METRIC_PREFIX = "eval/"
MAX_VERSIONS = 50


def registry_view(name: str, tracking_uri: str | None) -> RegistryView:
    """Newest version first; ``tracking_uri`` None is MLflow's default (``MLFLOW_TRACKING_URI``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(
        f"name = '{name}'", max_results=MAX_VERSIONS, order_by=["version_number DESC"]
    )
    return RegistryView(
        name=name,
        versions=[
            RegistryVersion(
                version=str(v.version),
                aliases=sorted(aliases.get(str(v.version), [])),
                run_id=v.run_id,
                created_at=v.creation_timestamp / 1000,
                status=str(v.status),
                metrics=held_out_metrics(client, v.run_id),
                tags=dict(v.tags or {}),
            )
            for v in versions
        ],
    )


def held_out_metrics(client, run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    metrics = client.get_run(run_id).data.metrics
    return {key: float(value) for key, value in sorted(metrics.items()) if key.startswith(EVAL_METRIC_PREFIX)}
