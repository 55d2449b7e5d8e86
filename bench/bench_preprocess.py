"""Preprocessing throughput: the Ray Data pipeline with 1 and 2 workers, from a local folder and from S3,
against a plain single-process loop.

    python bench/bench_preprocess.py [--corpus ../shared/corpus/vi-espeak-dev] [--repeat 4] [--no-s3]

Builds a temporary corpus of ``--repeat`` copies of the corpus (distinct names, so no duplicate rows), about
1.06 hours of audio for the dev corpus x4, then measures in one process:
- the single-process loop (same functions as the workers: read + decode, resample, mel + float16 encode,
  then the length sort and Parquet write), per stage, with 1 torch thread (what each Ray worker gets) and
  with torch's default thread count;
- ``preprocess_corpus`` end to end (driver parsing, Ray tasks, sort, write, manifest) with 1 and 2 workers on
  a local 2-CPU Ray, after a cold first run (printed separately) that starts the workers, so worker start-up
  (a torch import each) is not counted in the warm runs;
- the same from S3 to S3: the corpus uploaded to moto's S3 server on loopback (``AWS_ENDPOINT_URL``), the
  tasks reading the audio and the driver writing the shards through the S3 API (no network latency, so this
  measures the pipeline's S3 path, not a real bucket's bandwidth).
The loop (1 thread) and the two pipeline runs are repeated in interleaved rounds; medians are printed as
markdown tables of audio-hours per minute and of the loop's per-stage cost.

On a shared machine the numbers depend on the other work: Linux's autogroup scheduler gives each session an
equal share of the CPUs, and the Ray workers run in the driver's session, so while other sessions are busy
a second worker adds little. So each run also reports the CPU seconds used by this session (driver, Ray
processes and workers, from /proc) and "cores used" = CPU seconds / wall seconds, which shows how much CPU
the run actually got; the load average is printed too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import ray
import torch

from data_pipelines import PreprocessConfig, preprocess_corpus
from data_pipelines.processing import (
    ClipLimits,
    check_clip,
    clip_mel,
    decode_clip,
    mono_at_rate,
    read_clip_bytes,
)
from data_pipelines.reading import check_rows, read_metadata, read_speakers
from data_pipelines.writing import sort_by_length, write_shards
from flowtts.config import MelConfig
from flowtts.shards import SHARD_SCHEMA, encode_mel
from flowtts.storage import resolve
from flowtts.text import normalize_text
from flowtts.usage_reporting import usage_reporting_off

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from local_services import LocalS3Server  # noqa: E402 - scripts/ is not a package

STAGES = ("decode", "resample", "mel", "write")
LOOP = "single-process loop, 1 torch thread"
COLD = "Ray Data pipeline, 2 workers, cold (incl. worker start-up)"
T = TypeVar("T")
DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "vi-espeak-dev"


def build_repeated_corpus(source: Path, folder: Path, repeat: int) -> Path:
    """``repeat`` copies of every clip under distinct names, with matching metadata and speakers files."""
    (folder / "wavs").mkdir(parents=True)
    meta, speakers = ["audio_file|text"], ["audio_file|speaker"]
    speaker_of = read_speakers(resolve(source / "speakers.csv")) if (source / "speakers.csv").exists() else {}
    for row in read_metadata(resolve(source / "metadata.csv")).rows:
        for copy in range(repeat):
            name = f"wavs/r{copy}_{Path(row.audio_file).name}"
            shutil.copyfile(source / row.audio_file, folder / name)
            meta.append(f"{name}|{row.text}")
            speakers.append(f"{name}|{speaker_of.get(row.audio_file, 'default')}")
    (folder / "metadata.csv").write_text("\n".join(meta) + "\n", encoding="utf-8")
    (folder / "speakers.csv").write_text("\n".join(speakers) + "\n", encoding="utf-8")
    return folder


def single_process_loop(corpus: Path, out: Path, threads: int) -> dict[str, float]:
    """Seconds per stage for the plain loop; 'audio_s' is the audio processed."""
    torch.set_num_threads(threads)
    mel, limits = MelConfig(), ClipLimits()
    rows = check_rows(read_metadata(resolve(corpus / "metadata.csv")).rows, {}, normalize_text).clips
    stages: dict[str, float] = defaultdict(float)
    records = []
    for row in rows:
        started = time.perf_counter()
        clip = decode_clip(read_clip_bytes(resolve(corpus), row.audio_file))
        check_clip(clip, limits)
        decoded = time.perf_counter()
        wav = mono_at_rate(clip, mel.target_sample_rate)
        resampled = time.perf_counter()
        frames = clip_mel(wav, mel)
        blob = encode_mel(frames)
        done = time.perf_counter()
        stages["decode"] += decoded - started
        stages["resample"] += resampled - decoded
        stages["mel"] += done - resampled
        stages["audio_s"] += wav.numel() / mel.target_sample_rate
        records.append(
            {
                "audio_file": row.audio_file,
                "text": row.text,
                "speaker": row.speaker,
                "duration": wav.numel() / mel.target_sample_rate,
                "n_frames": frames.shape[0],
                "mel": blob,
            }
        )
    started = time.perf_counter()
    table = sort_by_length(pa.Table.from_pylist(records, schema=SHARD_SCHEMA))
    write_shards(table, resolve(out), "shards", 128 * 2**20)
    stages["write"] = time.perf_counter() - started
    return dict(stages)


def pipeline_run(corpus: str | Path, out: str | Path, workers: int) -> None:
    result = preprocess_corpus(PreprocessConfig(corpus=corpus, out=out, num_workers=workers, overwrite=True))
    assert result.rejected == 0, result.rejected_by_reason


def upload_to_s3(folder: Path, env: dict[str, str]) -> str:
    """The corpus into a fresh bucket of the loopback S3 server -> its URI."""
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
    target = resolve("s3://bench/corpus")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target.join(path.relative_to(folder).as_posix()).write_bytes(path.read_bytes())
    return target.uri


def session_cpu_seconds() -> float:
    """user + system CPU seconds of every live process in this session: the driver, Ray's raylet and GCS,
    and the Ray workers (which stay in the driver's session)."""
    session, total = os.getsid(0), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Timings:
    """(wall seconds, session CPU seconds) per named run."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def measure(self, name: str, work: Callable[[], T]) -> T:
        wall, cpu = time.perf_counter(), session_cpu_seconds()
        result = work()
        self.runs[name].append((time.perf_counter() - wall, session_cpu_seconds() - cpu))
        return result


def main() -> None:
    usage_reporting_off()  # before MLflow or Ray start: flowtts.usage_reporting
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--repeat", type=int, default=4, help="copies of the corpus (4 x dev corpus = 1.06 h)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--no-s3", action="store_true", help="skip the runs from the loopback S3 server")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    timings = Timings()
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as scratch:
        work = Path(scratch)
        corpus = build_repeated_corpus(args.corpus, work / "corpus", args.repeat)
        s3 = None if args.no_s3 else LocalS3Server(work / "moto")
        s3_env = s3.start() if s3 else {}
        os.environ.update(s3_env)  # the driver reaches S3 the standard way; the workers get it from runtime_env
        s3_corpus = upload_to_s3(corpus, s3_env) if s3 else None
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": s3_env})
        ray.data.DataContext.get_current().enable_progress_bars = False
        timings.measure(COLD, lambda: pipeline_run(corpus, work / "out", workers=2))  # starts the workers
        timings.measure(
            f"single-process loop, {default_threads} torch threads",
            lambda: single_process_loop(corpus, work / "loop", default_threads),
        )
        stage_runs = []
        for _ in range(args.rounds):  # interleaved, so drifting load on a shared machine hits all alike
            stage_runs.append(timings.measure(LOOP, lambda: single_process_loop(corpus, work / "loop", threads=1)))
            for workers in (1, 2):
                name = f"Ray Data pipeline, {workers} worker(s), warm"
                timings.measure(name, lambda w=workers: pipeline_run(corpus, work / "out", w))
                if s3_corpus:
                    name = f"Ray Data pipeline S3 -> S3 (loopback), {workers} worker(s), warm"
                    timings.measure(name, lambda w=workers: pipeline_run(s3_corpus, "s3://bench/out", w))
        ray.shutdown()
        if s3:
            s3.stop()
    print_report(args, timings, stage_runs)
    print(f"\n1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores)")


def table_row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_report(args: argparse.Namespace, timings: Timings, stage_runs: list[dict]) -> None:
    audio_s = stage_runs[0]["audio_s"]
    baseline = statistics.median(wall for wall, _ in timings.runs[LOOP])
    print(f"\ncorpus: {args.corpus} x{args.repeat} = {audio_s / 3600:.3f} h of audio, {args.rounds} rounds\n")
    header = ("run", "wall s (median)", "wall s (all)", "audio-h/min", "vs loop", "CPU s", "cores used")
    print(table_row(*header))
    print(table_row(*["---"] * len(header)))
    for name, runs in timings.runs.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        walls = ", ".join(f"{w:.1f}" for w, _ in runs)
        rate = audio_s / 3600 / (wall / 60)
        print(
            table_row(
                name, f"{wall:.1f}", walls, f"{rate:.2f}", f"{baseline / wall:.2f}x", f"{cpu:.1f}", f"{cpu / wall:.2f}"
            )
        )
    print("\nsingle-process loop (1 torch thread), per stage (median of rounds):\n")
    print(table_row("stage", "seconds", "ms per audio second", "share"))
    print(table_row("---", "---", "---", "---"))
    stage_total = statistics.median(sum(run[k] for k in STAGES) for run in stage_runs)
    for stage in STAGES:
        seconds = statistics.median(run[stage] for run in stage_runs)
        print(table_row(stage, f"{seconds:.2f}", f"{1000 * seconds / audio_s:.2f}", f"{seconds / stage_total:.0%}"))


if __name__ == "__main__":
    main()
