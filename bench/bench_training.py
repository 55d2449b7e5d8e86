"""Training throughput on CPU through the real stack (Ray Train V2, DDP over gloo, MLflow): mel frames per
second and the share of step time spent waiting for data, for 1 and 2 workers.

    python bench/bench_training.py --data DATASET_DIR [--presets tiny F5TTS_v1_Small] [--steps 8]

DATASET_DIR is a preprocessed dataset (``jobs/preprocess.py --corpus samples/vi-demo --out DIR``). Every
run uses the same per-worker frame budget, so 2 workers train on twice the frames per step; frames/s
counts the frames of all workers. 1 worker gets all CPUs (torch threads = CPUs), 2 workers half each.
Numbers are medians over the steps after the first two (warm-up). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from flowtts.usage_reporting import usage_reporting_off
from trainer.launch import TrainJob, run_training

WARMUP_STEPS = 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--presets", nargs="+", default=["tiny", "F5TTS_v1_Small"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="optimizer updates per run (tiny)")
    parser.add_argument("--large-steps", type=int, default=4, help="updates per run for non-tiny presets")
    parser.add_argument("--frames", type=int, default=2000, help="frame budget per worker and step")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    return parser.parse_args()


def measure(args: argparse.Namespace, storage: Path, preset: str, workers: int) -> dict[str, float]:
    steps = args.steps if preset == "tiny" else args.large_steps
    job = TrainJob(
        config=preset,
        data=args.data,
        storage=storage,
        name=f"bench-{preset}-{workers}w",
        workers=workers,
        cpus_per_worker=args.cpus / workers,
        max_steps=steps,
        checkpoint_every=steps,
        log_every=1,
        overrides={"train.batch_size_per_gpu": args.frames, "train.log_samples_per_updates": 0},
    )
    outcome = run_training(job, register=False)
    client = MlflowClient(outcome.tracking_uri)

    def median(key: str) -> float:
        history = sorted(client.get_metric_history(outcome.mlflow_run_id, key), key=lambda m: m.step)
        return statistics.median(m.value for m in history[WARMUP_STEPS:] or history)

    return {"frames_per_sec": median("frames_per_sec"), "data_wait_share": median("data_wait_share"), "steps": steps}


def main() -> None:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
        for preset in args.presets:
            for workers in args.workers:
                result = measure(args, Path(storage), preset, workers)
                rows.append((preset, workers, result))
                print(f"{preset} {workers} worker(s): {result}", flush=True)
    ray.shutdown()
    print(
        f"\nframe budget {args.frames} per worker and step, {args.cpus} CPUs, medians after "
        f"{WARMUP_STEPS} warm-up steps\n"
    )
    print("| preset | workers | CPUs/worker | steps | frames/s | data wait (share of step time) |")
    print("|---|---|---|---|---|---|")
    for preset, workers, result in rows:
        print(
            f"| {preset} | {workers} | {args.cpus / workers:g} | {result['steps']} | "
            f"{result['frames_per_sec']:.0f} | {result['data_wait_share']:.2%} |"
        )


if __name__ == "__main__":
    main()
