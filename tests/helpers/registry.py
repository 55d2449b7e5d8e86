"""Test helper: register checkpoint folders in an MLflow registry the way training does (a FlowTTSPyfunc
model logged in its own run, with ``artifacts={"checkpoint": folder}``)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from flowtts.pyfunc import FlowTTSPyfunc


def register_checkpoints(tracking_uri: str, artifacts: Path | None, folders: list[Path], name: str) -> list[str]:
    """One run and one new version of ``name`` per folder, in order; returns the version numbers. The artifacts
    go to the folder ``artifacts``, or with None to the server's own store (``mlflow-artifacts:/``, served over
    HTTP: what every node of a cluster can reach)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    location = artifacts.as_uri() if artifacts is not None else None
    experiment = client.create_experiment(f"{name}-tests", artifact_location=location)
    mlflow.set_tracking_uri(tracking_uri)
    versions = []
    for folder in folders:
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(
                name="flowtts",
                python_model=FlowTTSPyfunc(),
                pip_requirements=["flowtts"],
                artifacts={"checkpoint": str(folder)},
                registered_model_name=name,
            )
        versions.append(str(info.registered_model_version))
    return versions


def attempt_records(tracking_uri: str, run_id: str) -> dict[int, dict]:
    """What rank 0 of a training run logged at each (re)start (``attempts/start_step_*.json``), by start step."""
    import json
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="attempts", dst_path=tmp, tracking_uri=tracking_uri
        )
        records = [json.loads(p.read_text()) for p in Path(folder).glob("start_step_*.json")]
    return {record["start_step"]: record for record in records}
