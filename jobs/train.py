"""Train a flow-matching TTS model with Ray Train (DDP), tracked in MLflow, ending in the model registry.

    python jobs/train.py --config tiny --data DATASET_DIR [--workers 2] [--max-steps 1000]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train.py --config F5TTS_v1_Base --data /shared/ds --gpu --workers 8 --storage /shared/runs

With RAY_ADDRESS set (as under ``ray job submit``) it attaches to that cluster, otherwise it starts a
private local Ray instance. Re-running with the same --name (and --storage) resumes that run. Prints
one JSON line at the end: run name, step, checkpoint, MLflow run id and the registered model URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from trainer.cluster import connect_ray
from trainer.job_exit import exit_on_project_error
from trainer.launch import TrainJob, add_run_options, run_training


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as YAML scalars (``1e-4`` -> float, ``[1, 2]`` -> list)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset name (tiny, F5TTS_v1_Base, ...) or a YAML file")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder written by preprocess.py")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. train.learning_rate=1e-4 (repeatable)",
    )
    parser.add_argument("--name", help="run name; the same name resumes the run (default: preset-timestamp)")
    parser.add_argument("--workers", type=int, default=1, help="DDP workers (default 1)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=0.5,
        help="Ray CPUs per worker (default 0.5); torch threads = max(1, int(this))",
    )
    parser.add_argument("--max-steps", type=int, help="stop at this optimizer update (default train.max_updates)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", type=Path, help="official F5-TTS checkpoint or a checkpoint folder of ours")
    parser.add_argument("--init-vocab", type=Path, help="vocab.txt of an official --init-from checkpoint")
    parser.add_argument(
        "--duration-predictor",
        action="store_true",
        help="train a duration predictor together with the CFM (its loss is logged as "
        "duration_loss; same-speaker clip pairs, so the data needs speakers)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default train.save_per_updates)"
    )
    parser.add_argument("--log-every", type=int, default=10, help="steps between progress lines (default 10)")
    parser.add_argument("--sample-steps", type=int, default=32, help="NFE of the logged samples (default 32)")
    parser.add_argument("--vocoder", help="Vocos folder for samples and the registered model (default: Griffin-Lim)")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-failure restarts (default 2)")
    add_run_options(parser)
    return parser.parse_args(argv)


@exit_on_project_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )
    overrides = parse_overrides(args.overrides)
    if args.duration_predictor:
        overrides.setdefault("model.duration_predictor", {})  # the default predictor config
    job = TrainJob(
        config=args.config,
        data=args.data,
        overrides=overrides,
        name=args.name,
        storage=args.storage,
        workers=args.workers,
        gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        max_steps=args.max_steps,
        seed=args.seed,
        init_from=args.init_from,
        init_vocab=args.init_vocab,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        sample_steps=args.sample_steps,
        vocoder=args.vocoder,
        max_failures=args.max_failures,
        experiment=args.experiment,
        registered_model=args.registered_model,
        alias=args.alias,
    )
    connect_ray(args.workers * args.cpus_per_worker, args.num_cpus)
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
