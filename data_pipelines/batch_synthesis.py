"""Batch synthesis on Ray Data: a file of utterances in, audio files, a manifest and a report of refused rows out.

The driver stages the input (``data_pipelines.batch_input``: read as a stream, rows numbered, duplicate
ids found), then streams the rows through an actor pool
(``data_pipelines.batch_worker.RowSynthesizer``, one model per actor) and writes the results as they
come, in input order: its memory does not depend on the number of rows. Output under ``out``::

    audio/<id>.<format>   24 kHz audio, each file written atomically
    manifest.parquet      one row per written file (row, id, path, duration_s, seed, nfe, voice, text,
                          model_uri, model_version)
    rejected.jsonl        one object per refused row: row, id (absent when the id itself is bad), reason, message
    job.json              what was asked (and its fingerprint), the seed, the state and the summary
    _state/               the staged rows and one record per written row; removed once the job is complete

Exactly once: a row counts as written when its record exists, and a record is written after its audio.
Running the same command again after any interruption (killed actor, killed driver, ``ray job stop``)
synthesises only the rows without a record and ends with the manifest an uninterrupted run writes; a
rerun of a complete job synthesises nothing. The same ``out`` with a different job is refused unless
``overwrite`` (which removes it first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from data_pipelines.batch_input import input_format, stage_rows
from data_pipelines.batch_worker import STATE_DIR, BatchJob, RowSynthesizer
from data_pipelines.writing import OutputExistsError
from flowtts.model_source import ModelSource, resolve_model_source
from flowtts.storage import Location, resolve
from flowtts.synthesis import TARGET_RMS, InvalidOptionsError, JudgeRequiredError, SamplingSettings
from flowtts.synthesis.batching import DEFAULT_MAX_BATCH_FRAMES
from flowtts.synthesis.planning import draw_seed

logger = logging.getLogger(__name__)

JOB_FILE, MANIFEST_FILE, REJECTED_FILE = "job.json", "manifest.parquet", "rejected.jsonl"
ROWS_DIR = f"{STATE_DIR}/rows"
BATCH_FORMATS = ("wav", "flac", "mp3")
PROGRESS_EVERY_S = 15.0
MLFLOW_EXPERIMENT = "flowtts-batch-synthesis"
MANIFEST_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("seed", pa.int64()),
        ("nfe", pa.int64()),
        ("voice", pa.string()),
        ("text", pa.string()),
        ("candidates", pa.int64()),
        ("chosen_seeds", pa.list_(pa.int64())),
        ("model_uri", pa.string()),
        ("model_version", pa.string()),
    ]
)


@dataclass(frozen=True)
class BatchRequest:
    """Everything ``jobs/synthesize_batch.py`` asks for."""

    model: str
    input: str
    out: str
    voices: str | None = None
    format: str = "wav"
    sampling: SamplingSettings = SamplingSettings()
    seed: int | None = None  # None: drawn once, kept in job.json for every rerun
    target_rms: float = TARGET_RMS
    concurrency: int = 1
    gpu: bool = False
    cpus_per_actor: float = 1.0
    rows_per_batch: int = 8
    max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES
    max_text_chars: int = 2000
    candidates: int = 1  # best of N per chunk, chosen by the ASR judge of ``judges``
    judges: dict[str, Any] | None = None  # flowtts.synthesis.cli.judge_options
    overwrite: bool = False
    track: bool = True  # an MLflow run, when MLFLOW_TRACKING_URI is set
    load_options: dict[str, Any] = field(default_factory=dict)  # Synthesizer.from_pretrained keywords

    def __post_init__(self) -> None:
        checks = [
            ("format", self.format in BATCH_FORMATS, f"one of {', '.join(BATCH_FORMATS)}"),
            ("concurrency", self.concurrency >= 1, ">= 1"),
            ("cpus_per_actor", self.cpus_per_actor > 0, "> 0"),
            ("rows_per_batch", self.rows_per_batch >= 1, ">= 1"),
            ("max_batch_frames", self.max_batch_frames >= 1, ">= 1"),
            ("max_text_chars", self.max_text_chars >= 1, ">= 1"),
            ("candidates", self.candidates >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidOptionsError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")
        if self.candidates > 1 and not (self.judges and self.judges.get("asr")):
            raise JudgeRequiredError(f"candidates={self.candidates} needs an ASR judge (--judge-asr-model)")

    def asked(self, source: ModelSource, input_info: dict) -> dict:
        """What decides the output (not how fast it is made): equal for a rerun of the same job."""
        return {
            "model": source.load_uri,
            "input": resolve(self.input).uri,
            "input_file": input_info,
            "voices": resolve(self.voices).uri if self.voices else None,
            "format": self.format,
            "sampling": asdict(self.sampling),
            "seed": self.seed,
            "target_rms": self.target_rms,
            "max_text_chars": self.max_text_chars,
            "candidates": self.candidates,
            "judges": {k: self.judges[k] for k in ("asr", "speaker")} if self.judges else None,
            "load_options": {k: str(v) for k, v in sorted(self.load_options.items()) if k != "device"},
        }


@dataclass(frozen=True)
class BatchResult:
    out: str
    rows: int
    written: int
    rejected: int
    synthesized: int  # by this run
    audio_seconds: float
    wall_seconds: float
    rejected_by_reason: dict[str, int]

    def summary(self) -> str:
        return json.dumps(
            {
                "rows": self.rows,
                "written": self.written,
                "rejected": self.rejected,
                "synthesized": self.synthesized,
                "audio_seconds": round(self.audio_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "out": self.out,
            }
        )


def check_request(request: BatchRequest) -> tuple[ModelSource, Location, Location]:
    """What fails before any work: the model names nothing, the input is missing or unreadable, the output
    holds something else. Raises ``ModelSourceError``, ``FileNotFoundError``, ``InputError`` or
    ``OutputExistsError``, each naming what it is about."""
    source = resolve_model_source(request.model)
    source_file = resolve(request.input)
    if not source_file.is_file():
        raise FileNotFoundError(f"input {source_file} does not exist")
    input_format(source_file)
    out = resolve(request.out)
    if out.uri == source_file.uri or source_file.uri.startswith(out.uri.rstrip("/") + "/"):
        raise OutputExistsError(f"output {out} would contain the input {source_file}; choose another --out")
    return source, source_file, out


def synthesize_batch(request: BatchRequest, connect: Callable[[], None] | None = None) -> BatchResult:
    """Run the job; ``connect`` (e.g. ``trainer.cluster.connect_ray``) is called once Ray is needed, which a
    rerun of a complete job never is (default: the Ray instance of this process, started by Ray Data)."""
    started = time.monotonic()
    source, source_file, out = check_request(request)
    info = source_file.fs.get_file_info(source_file.path)
    asked = request.asked(source, {"size": info.size, "mtime_ns": info.mtime_ns})
    state = _open_output(out, asked, request.overwrite)
    if state["status"] == "complete":
        logger.info("%s is complete: nothing to synthesise", out)
        return BatchResult(**{**state["result"], "synthesized": 0, "wall_seconds": time.monotonic() - started})
    if connect is not None:
        connect()
    rows_dir = out.join(ROWS_DIR)
    if state["status"] == "staging":
        rows_dir.delete_dir()
        staged = stage_rows(source_file, rows_dir)
        state.update(status="running", rows=staged.rows, parts=staged.parts, duplicates=sorted(staged.duplicates))
        _save(out, state)
        logger.info("staged %d rows of %s in %.1f s", state["rows"], source_file, time.monotonic() - started)
    job = BatchJob(
        source=source,
        load_options={**request.load_options, **({"device": "cuda"} if request.gpu else {})},
        input_dir=source_file.sibling("").uri.rstrip("/"),
        out=out.uri,
        voices=resolve(request.voices).uri if request.voices else None,
        format=request.format,
        sampling=request.sampling,
        seed=state["seed"],
        target_rms=request.target_rms,
        max_text_chars=request.max_text_chars,
        max_batch_frames=request.max_batch_frames,
        candidates=request.candidates,
        judges=request.judges,
        duplicates=frozenset(state["duplicates"]),
    )
    counts = _run(job, rows_dir, out, request, source, state)
    result = BatchResult(out=out.uri, wall_seconds=time.monotonic() - started, **counts)
    state.update(status="complete", result={k: v for k, v in asdict(result).items() if k != "synthesized"})
    _save(out, state)
    out.join(STATE_DIR).delete_dir()
    if request.track:
        _track(request, source, result)
    return result


def _open_output(out: Location, asked: dict, overwrite: bool) -> dict:
    """The job's state: a new one, or the one in ``out/job.json`` when it is the same job."""
    job_file = out.join(JOB_FILE)
    if overwrite:
        out.delete_dir()
    elif job_file.is_file():
        state = json.loads(job_file.read_text())
        if state["fingerprint"] == _fingerprint(asked):
            return state
        differs = sorted(k for k in asked if state["asked"].get(k) != asked[k])
        raise OutputExistsError(
            f"{out} holds the output of another batch synthesis job (it differs in {', '.join(differs)}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    elif out.exists():
        raise OutputExistsError(f"{out} exists and is not a batch synthesis output; pass --overwrite or choose another")
    seed = asked["seed"] if asked["seed"] is not None else draw_seed()
    state = {"fingerprint": _fingerprint(asked), "asked": asked, "seed": seed, "status": "staging"}
    _save(out, state)
    return state


def _fingerprint(asked: dict) -> str:
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def _save(out: Location, state: dict) -> None:
    out.join(JOB_FILE).write_bytes_atomic(json.dumps(state, indent=1, ensure_ascii=False).encode())


def _run(job: BatchJob, rows_dir: Location, out: Location, request: BatchRequest, source: ModelSource, state: dict):
    """The actor pool over the staged parts, one block each (small parts would be read as one block, which
    one actor would take alone)."""
    total, parts = state["rows"], state["parts"]
    context = ray.data.DataContext.get_current()
    preserve_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # the manifest in input order: the same on every run
    try:
        rows = ray.data.read_parquet(
            rows_dir.path,
            filesystem=rows_dir.fs,
            override_num_blocks=parts,
            ray_remote_args={"num_cpus": 0},  # small reads, which busy actors must not starve either
        )
        results = rows.map_batches(
            RowSynthesizer,
            fn_constructor_kwargs={"job": job},
            batch_size=request.rows_per_batch,
            batch_format="pyarrow",
            # from one actor up: Ray Data's file listing is a 1-CPU task, which actors holding every CPU
            # from the start would starve (a hang when concurrency x cpus_per_actor = the cluster's CPUs); one
            # block in flight per actor, so that queued blocks make the pool grow instead of waiting in one actor
            compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=request.concurrency, max_tasks_in_flight_per_actor=1
            ),
            num_cpus=request.cpus_per_actor,
            num_gpus=1 if request.gpu else 0,
        )  # Ray Data's actor pool replaces a lost actor and runs its batch again (max_restarts=-1 by default)
        return _write_results(results, out, source, total)
    finally:
        context.execution_options.preserve_order = preserve_order


def _write_results(results, out: Location, source: ModelSource, total: int) -> dict:
    """Stream the actors' results into the manifest and the rejection report, then move both into place."""
    progress = _Progress(total)
    reasons: Counter[str] = Counter()
    written = synthesized = 0
    audio_seconds = 0.0
    staged = {name: out.join(STATE_DIR, name) for name in (MANIFEST_FILE, REJECTED_FILE)}
    model = {"model_uri": source.uri, "model_version": source.label}
    with contextlib.ExitStack() as stack:
        manifest = stack.enter_context(staged[MANIFEST_FILE].open_output())
        rejected = stack.enter_context(staged[REJECTED_FILE].open_output())
        writer = stack.enter_context(pq.ParquetWriter(manifest, MANIFEST_SCHEMA))
        for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
            done = batch.filter(pc.equal(batch["status"], "written"))
            table = done.select([n for n in MANIFEST_SCHEMA.names if n in done.column_names])
            for name, value in model.items():
                table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
            writer.write_table(table.cast(MANIFEST_SCHEMA))
            for row in batch.filter(pc.equal(batch["status"], "rejected")).to_pylist():
                reasons[row["reason"]] += 1
                record = {"row": row["row"], **({"id": row["id"]} if row["id"] else {})}
                line = {**record, "reason": row["reason"], "message": row["message"]}
                rejected.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            written += done.num_rows
            fresh = done.filter(done["synthesized"])
            synthesized += fresh.num_rows
            audio_seconds += float(pc.sum(done["duration_s"]).as_py() or 0.0)
            progress.update(batch.num_rows, float(pc.sum(fresh["duration_s"]).as_py() or 0.0))
    for name, location in staged.items():
        out.join(name).delete_file()
        location.fs.move(location.path, out.join(name).path)
    return {
        "rows": total,
        "written": written,
        "rejected": sum(reasons.values()),
        "synthesized": synthesized,
        "audio_seconds": audio_seconds,
        "rejected_by_reason": dict(sorted(reasons.items())),
    }


class _Progress:
    """A log line every PROGRESS_EVERY_S: rows done, audio seconds per second, ETA."""

    def __init__(self, total: int):
        self.total, self.done, self.audio = total, 0, 0.0
        self.started = self.last = time.monotonic()

    def update(self, rows: int, audio_seconds: float) -> None:
        self.done += rows
        self.audio += audio_seconds
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        eta = (self.total - self.done) / (self.done / elapsed) if self.done else float("inf")
        logger.info(
            "batch synthesis: %d/%d rows (%.1f%%), %.2f audio s/s, ETA %s",
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            self.audio / elapsed,
            time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "unknown",
        )


def _track(request: BatchRequest, source: ModelSource, result: BatchResult) -> None:
    """An MLflow run with the counts, the throughput and the model version, when MLFLOW_TRACKING_URI is set
    (through a client of its own: the process' MLflow state is left as it was)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(MLFLOW_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"batch {resolve(request.out).name}")
    params = {
        "model": source.uri,
        "input": resolve(request.input).uri,
        "out": result.out,
        "format": request.format,
        "nfe": request.sampling.nfe,
        "concurrency": request.concurrency,
        "gpu": request.gpu,
    }
    wall = max(result.wall_seconds, 1e-9)
    metrics = {
        "rows": result.rows,
        "written": result.written,
        "rejected": result.rejected,
        "synthesized": result.synthesized,
        "audio_seconds": result.audio_seconds,
        "wall_seconds": result.wall_seconds,
        "audio_seconds_per_second": result.audio_seconds / wall,
        "rows_per_second": result.rows / wall,
        **{f"rejected/{reason}": count for reason, count in result.rejected_by_reason.items()},
    }
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag("flowtts.model_uri", source.load_uri), RunTag("flowtts.model_version", source.label)],
    )
    client.set_terminated(run.info.run_id)
