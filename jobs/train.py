"""Train a flow-matching TTS model with Ray Train (DDP), tracked in MLflow, ending in the model registry.

    python jobs/train.py --config tiny --data DATASET_DIR_OR_URI [--workers 2] [--max-steps 1000]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train.py --config F5TTS_v1_Base --data s3://bucket/ds --gpu --workers 8 --storage s3://bucket/runs

With RAY_ADDRESS set (as under ``ray job submit``) it attaches to that cluster, otherwise it starts a
private local Ray instance. --storage is a folder or a URI (s3://bucket/runs, gs://..., hdfs://...; on a
cluster a URI every node reaches, with MLFLOW_TRACKING_URI set to a tracking server, as the embedded
sqlite store needs a local folder). Re-running with the same --name (and --storage) resumes that run. Prints
one JSON line at the end: run name, step, checkpoint, MLflow run id and the registered model URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import yaml

from flowtts.options import add_model_options
from flowtts.usage_reporting import usage_reporting_off
from trainer.cluster import connect_ray
from trainer.job_exit import exit_on_project_error
from trainer.launch import run_training
from trainer.settings import TrainJob
from trainer.tracking import tracking_uri_for


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as YAML scalars (``1e-4`` -> float, ``[1, 2]`` -> list)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_args(argv: list[str] | None = None) -> TrainJob:
    """The command line as a ``TrainJob``: its flags are built from the model's fields."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser, TrainJob)
    values = vars(parser.parse_args(argv))
    return TrainJob(**{**values, "overrides": parse_overrides(values.get("overrides", []))})


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    job = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )
    tracking_uri_for(job.storage)  # a storage URI without MLFLOW_TRACKING_URI fails here, before Ray starts
    connect_ray(job.workers * job.cpus_per_worker, job.num_cpus)
    outcome = run_training(job)
    registration = outcome.registration
    print(
        json.dumps(
            {
                "name": outcome.name,
                "step": outcome.step,
                "loss": outcome.metrics.get("loss"),
                "checkpoint": outcome.checkpoint,
                "mlflow_run_id": outcome.mlflow_run_id,
                "tracking_uri": outcome.tracking_uri,
                "model_uri": registration.model_uri if registration else None,
                "model_version": registration.version if registration else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
