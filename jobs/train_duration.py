"""Train the duration predictor alone, on Ray Train, for a trained or imported model; register the result.

    python jobs/train_duration.py --model models:/flowtts@production --data DATASET_DIR [--steps 1000]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train_duration.py --model models:/flowtts@production --data s3://bucket/ds \\
            --storage s3://bucket/runs

``--model`` is a registered model URI or a checkpoint folder of ours (an official checkpoint imported with
``flowtts.checkpoint.load_f5_checkpoint`` and saved with ``save_checkpoint``). The CFM weights stay as
they are; a predictor is added when the model has none (else the existing one keeps training). The
held-out duration error of the predictor and of upstream's byte-ratio rule is logged to MLflow, and the
model is registered as a new version with alias ``--alias``. --storage is a folder or a URI (s3://bucket/runs,
gs://..., hdfs://...; a URI needs MLFLOW_TRACKING_URI). Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from flowtts.options import add_model_options, model_from_args
from flowtts.usage_reporting import usage_reporting_off
from trainer.cluster import connect_ray
from trainer.duration_job import DurationJob, run_duration_training
from trainer.job_exit import exit_on_project_error
from trainer.settings import RunOptions
from trainer.tracking import tracking_uri_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder (path or s3://... URI)"
    )
    parser.add_argument("--data", required=True, help="dataset folder or URI (s3://...) written by preprocess.py")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="clip pairs per step (default 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="run name (default: duration-timestamp)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs of the worker (default 1)")
    parser.add_argument("--gpu", action="store_true", help="train on one GPU")
    add_model_options(parser, RunOptions)  # where it runs, is tracked and registered
    return parser.parse_args(argv)


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args(argv)
    run = model_from_args(RunOptions, args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )
    job = DurationJob(
        model=args.model,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        name=args.name,
        storage=run.storage,
        cpus_per_worker=args.cpus_per_worker,
        gpu=args.gpu,
        experiment=run.experiment,
        registered_model=run.registered_model,
        alias=run.alias,
    )
    tracking_uri_for(job.storage)  # a storage URI without MLFLOW_TRACKING_URI fails here, before Ray starts
    connect_ray(args.cpus_per_worker, run.num_cpus)
    outcome = run_duration_training(job)
    print(
        json.dumps(
            {
                "metrics": outcome.metrics,
                "mlflow_run_id": outcome.mlflow_run_id,
                "tracking_uri": outcome.tracking_uri,
                "model_uri": outcome.registration.model_uri,
                "model_version": outcome.registration.version,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
