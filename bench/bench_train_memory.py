"""Peak memory per training process and the data-wait share as the dataset grows (streaming training data).

For each size, a dataset is grown from a small preprocessed one: every training row is repeated until the
mel payload reaches the size, the copies of a row sit next to each other (so the shards stay sorted by
length, as preprocessing writes them) and are written in shards of ``--shard-mb`` with the writer's row
groups. The bench shards are uncompressed and without dictionary encoding: either would fold the
identical copies of a row into almost nothing, and the size on disk would no longer be the size read.
Then the ``tiny`` preset trains ``--steps`` steps with 2 Ray Train workers (a fresh local Ray per size,
so worker processes are new) and
the run's MLflow metrics give the peak RSS (``peak_rss_mb``: max over ranks of ``ru_maxrss``), the mean
data-wait share and the median frames/s. Before that, the reader alone is timed in this process on
``--reader-preset``'s frame budget (how long a rank's prefetch thread takes per batch). Each grown dataset
is deleted after its run.

    .venv/bin/python jobs/preprocess.py --corpus samples/vi-demo --out /tmp/demo-data
    .venv/bin/python bench/bench_train_memory.py --base /tmp/demo-data --work /tmp/bench-mem --sizes-gb 0.06 1 4 16
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from mlflow.tracking import MlflowClient

from data_pipelines.writing import PARQUET_OPTIONS, SHARD_NAME
from flowtts.config import load_config
from flowtts.shards import MANIFEST_FILE, SHARD_SCHEMA, TRAIN_DIR, VOCAB_FILE, read_table
from flowtts.training import EpochPlan, TrainingData, dataset_vocab
from flowtts.usage_reporting import usage_reporting_off
from trainer.launch import TrainJob, run_training

WARMUP_STEPS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a small dataset written by preprocess.py")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the grown datasets and runs")
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[0.06, 1.0, 4.0, 16.0])
    parser.add_argument("--steps", type=int, default=24, help="training steps per size (0: the reader alone)")
    parser.add_argument("--reader-preset", default="F5TTS_v1_Base", help="frame budget of the reader timing")
    parser.add_argument("--reader-batches", type=int, default=50)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (1 per worker)")
    parser.add_argument("--shard-mb", type=float, default=128.0)
    return parser.parse_args()


def grow_dataset(base: Path, out: Path, size_gb: float, shard_mb: float) -> dict:
    """``base``'s training rows, each repeated ``copies`` times in place, as length-sorted shards."""
    rows = read_table(base, TRAIN_DIR).sort_by("n_frames").to_pylist()
    payload = sum(len(row["mel"]) for row in rows)
    copies = max(1, math.ceil(size_gb * 1e9 / payload))
    (out / TRAIN_DIR).mkdir(parents=True)
    shutil.copy(base / VOCAB_FILE, out / VOCAB_FILE)
    options = {"row_group_size": PARQUET_OPTIONS["row_group_size"], "compression": "none", "use_dictionary": False}
    shard, filled, index = [], 0, 0

    def flush() -> None:
        nonlocal shard, filled, index
        table = pa.Table.from_pylist(shard, schema=SHARD_SCHEMA)
        pq.write_table(table, out / TRAIN_DIR / SHARD_NAME.format(index=index), **options)
        shard, filled, index = [], 0, index + 1

    for row in rows:
        for copy in range(copies):
            shard.append({**row, "audio_file": f"{row['audio_file']}#{copy}"})
            filled += len(row["mel"])
            if filled >= shard_mb * 2**20:
                flush()
    if shard:
        flush()
    on_disk = sum(p.stat().st_size for p in (out / TRAIN_DIR).glob("*.parquet"))
    hours = copies * sum(row["duration"] for row in rows) / 3600
    info = {"rows": copies * len(rows), "copies": copies, "shards": index, "bytes": on_disk, "hours": hours}
    (out / MANIFEST_FILE).write_text(json.dumps({"counts": {"train": info["rows"]}, "bench": info}), encoding="utf-8")
    return info


def time_reader(dataset: Path, preset: str, batches: int) -> dict[str, float]:
    """The reader alone, in this process: rank 0 of 2 collating its first ``batches`` batches of
    ``preset``'s frame budget (the files were just written, so mostly from the page cache)."""
    train = load_config(preset).train
    data = TrainingData.from_folder(dataset, dataset_vocab(dataset))
    plan = EpochPlan(data.lengths, train.batch_size_per_gpu, train.max_samples, seed=0, rank=0, world=2)
    chosen = plan.rank_batches(0)[:batches]
    started = time.perf_counter()
    frames = sum(data.batch(rows).frames for rows in chosen)
    seconds = time.perf_counter() - started
    return {
        "reader_ms_per_batch": 1000 * seconds / len(chosen),
        "reader_frames_per_sec": frames / seconds,
        "row_groups_per_batch": sum(data.reader.loads.values()) / len(chosen),
    }


def measure(dataset: Path, storage: Path, name: str, steps: int, cpus: int) -> dict[str, float]:
    ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    try:
        job = TrainJob(
            config="tiny",
            data=str(dataset),
            storage=storage,
            name=name,
            workers=2,
            cpus_per_worker=cpus / 2,
            max_steps=steps,
            checkpoint_every=steps,
            log_every=10,
            max_failures=0,
            overrides={"train.log_samples_per_updates": 0},
        )
        outcome = run_training(job, register=False)
    finally:
        ray.shutdown()
    client = MlflowClient(outcome.tracking_uri)
    metrics = client.get_run(outcome.mlflow_run_id).data.metrics
    history = sorted(client.get_metric_history(outcome.mlflow_run_id, "frames_per_sec"), key=lambda m: m.step)
    waits = sorted(client.get_metric_history(outcome.mlflow_run_id, "data_wait_share"), key=lambda m: m.step)
    return {
        "peak_rss_mb": metrics["peak_rss_mb"],
        "data_wait_mean": metrics["data_wait_share_mean"],
        "data_wait_after_warmup": statistics.mean(m.value for m in waits[WARMUP_STEPS:]),
        "frames_per_sec": statistics.median(m.value for m in history[WARMUP_STEPS:]),
    }


def main() -> None:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes_gb:
        dataset = args.work / f"data-{size:g}gb"
        shutil.rmtree(dataset, ignore_errors=True)
        started = time.perf_counter()
        info = grow_dataset(args.base, dataset, size, args.shard_mb)
        grown = time.perf_counter() - started
        try:
            result = {"size_gb": size, **info, "grow_s": grown}
            result.update(time_reader(dataset, args.reader_preset, args.reader_batches))
            if args.steps:
                result.update(
                    measure(dataset, args.work / "runs", f"mem-{size:g}gb-{int(time.time())}", args.steps, args.cpus)
                )
        finally:
            shutil.rmtree(dataset, ignore_errors=True)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.steps} steps per size, tiny, 2 workers")
    print("| on disk | rows | hours | shards | peak RSS per worker | data wait (mean / after warm-up) | frames/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        wait = f"{r['data_wait_mean']:.1%} / {r['data_wait_after_warmup']:.1%}" if args.steps else "-"
        rss, fps = (f"{r['peak_rss_mb']:.0f} MB", f"{r['frames_per_sec']:.0f}") if args.steps else ("-", "-")
        print(
            f"| {r['bytes'] / 1e9:.2f} GB | {r['rows']} | {r['hours']:.1f} | {r['shards']} | {rss} | {wait} | {fps} |"
        )
    print(f"reader alone, {args.reader_preset} frame budget, rank 0 of 2:")
    print("| on disk | ms per batch | frames/s | row groups read per batch |")
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['bytes'] / 1e9:.2f} GB | {r['reader_ms_per_batch']:.1f} | {r['reader_frames_per_sec']:.0f} | "
            f"{r['row_groups_per_batch']:.2f} |"
        )


if __name__ == "__main__":
    main()
