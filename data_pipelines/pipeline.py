"""The preprocessing pipeline: corpus folder -> validated 24 kHz log-mel shards, vocab, report, manifest.

The driver parses the metadata (small: one row per clip) and does the checks that need no audio; the
decoding, checks on the signal, resampling and mel run in parallel as a Ray Data ``map_batches`` over a
task pool. Kept clips and rejections come back in one dataset and are split on the driver, which sorts
and writes the output into a staging folder that replaces ``out`` only when everything succeeded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

import flowtts
from data_pipelines.manifest import (
    SECONDS_PER_HOUR,
    duration_histogram,
    hours_per_speaker,
    input_fingerprint,
    mel_settings,
)
from data_pipelines.processing import PROCESSED_SCHEMA, SILENCE_PEAK, ClipLimits, process_batch
from data_pipelines.reading import (
    TEXT_FRONTENDS,
    ClipRow,
    MetadataFormat,
    Reason,
    Rejection,
    TextFrontend,
    check_rows,
    clip_key,
    read_metadata,
    read_speakers,
)
from data_pipelines.splitting import HeldoutChoice, heldout_by_fraction, heldout_by_list, read_holdout_list
from data_pipelines.writing import (
    ShardInfo,
    sort_by_length,
    staged_output,
    write_json,
    write_rejections,
    write_shards,
)
from flowtts.config import MelConfig
from flowtts.shards import HELDOUT_DIR, MANIFEST_FILE, REJECTED_FILE, SHARD_SCHEMA, TRAIN_DIR, VOCAB_FILE
from flowtts.text import Vocab

logger = logging.getLogger(__name__)

MAX_ROWS_PER_BLOCK = 64
"""Clips per Ray Data block (one task each) at most: about 3 min of audio, a few seconds of work."""
BLOCKS_PER_WORKER = 4
"""At least this many blocks per worker, so the last blocks balance out between workers."""
MIN_ROWS_PER_WORKER = 16
"""Fewer workers for tiny corpora: each worker process pays a torch import (seconds) before its first clip."""
SPEAKERS_FILE = "speakers.csv"
METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class PreprocessConfig:
    corpus: Path
    out: Path
    metadata: Path | None = None  # default: <corpus>/metadata.csv; audio paths stay relative to corpus
    format: MetadataFormat = "auto"
    min_duration: float = 0.3
    max_duration: float = 30.0
    vocab: Path | None = None  # extend this vocab instead of building one from the corpus
    text_frontend: TextFrontend = "plain"
    num_workers: int | None = None  # default: the cluster's CPUs
    seed: int = 0
    holdout_fraction: float = 0.0
    holdout_list: Path | None = None
    shard_mb: float = 128.0
    overwrite: bool = False
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self) -> None:
        corpus, out = Path(self.corpus).resolve(), Path(self.out).resolve()
        if not corpus.is_dir():
            raise FileNotFoundError(f"corpus folder {self.corpus} does not exist")
        if corpus.is_relative_to(out):
            raise ValueError(f"output folder {self.out} would contain the corpus {self.corpus}; choose another")
        if self.text_frontend not in TEXT_FRONTENDS:
            raise ValueError(f"text_frontend must be one of {sorted(TEXT_FRONTENDS)}, got {self.text_frontend!r}")
        if self.holdout_fraction and self.holdout_list:
            raise ValueError("give either holdout_fraction or holdout_list, not both")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.shard_mb <= 0:
            raise ValueError(f"shard_mb must be > 0, got {self.shard_mb}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        ClipLimits(self.min_duration, self.max_duration)  # validates the range

    @property
    def metadata_path(self) -> Path:
        return Path(self.metadata) if self.metadata else Path(self.corpus) / METADATA_FILE

    @property
    def limits(self) -> ClipLimits:
        return ClipLimits(self.min_duration, self.max_duration)


@dataclass(frozen=True)
class PreprocessResult:
    out: Path
    rows_read: int
    kept: int  # training rows
    heldout: int
    rejected: int
    rejected_by_reason: dict[str, int]
    audio_hours: float  # training + held out
    elapsed_s: float

    @property
    def audio_hours_per_minute(self) -> float:
        return self.audio_hours / (self.elapsed_s / 60) if self.elapsed_s > 0 else math.inf

    def summary(self) -> str:
        return (
            f"kept {self.kept}, held out {self.heldout}, rejected {self.rejected} of {self.rows_read} rows; "
            f"{self.audio_hours:.3f} h of audio in {self.elapsed_s:.1f} s "
            f"({self.audio_hours_per_minute:.2f} audio-hours/min) -> {self.out}"
        )


@dataclass(frozen=True)
class _Inputs:
    clips: list[ClipRow]
    rejections: list[Rejection]
    rows_read: int
    format: str
    files: list[tuple[str, bytes]]  # (role, bytes) of every input file besides the audio


@dataclass(frozen=True)
class _Outcome:
    train: pa.Table  # SHARD_SCHEMA, sorted by length
    heldout: pa.Table
    rejections: list[Rejection]
    heldout_unmatched: list[str]
    vocab: Vocab
    missing_characters: list[str]
    audio_hashes: list[tuple[str, str]]  # (clip key, sha256 of the file) for every file read


def preprocess_corpus(config: PreprocessConfig) -> PreprocessResult:
    """Run the whole pipeline on the Ray cluster this process is connected to (``ray.init`` first)."""
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call ray.init() (or use jobs/preprocess.py) first")
    started = time.perf_counter()
    with staged_output(Path(config.out), config.overwrite) as staging:
        inputs = _read_inputs(config)
        processed = process_clips(inputs.clips, config.limits, config.mel, config.num_workers)
        outcome = _split_outcome(processed, inputs, config)
        shards = _write_outputs(staging, outcome, config)
        result = PreprocessResult(
            out=Path(config.out),
            rows_read=inputs.rows_read,
            kept=outcome.train.num_rows,
            heldout=outcome.heldout.num_rows,
            rejected=len(outcome.rejections),
            rejected_by_reason=_count_reasons(outcome.rejections),
            audio_hours=(_total_seconds(outcome.train) + _total_seconds(outcome.heldout)) / SECONDS_PER_HOUR,
            elapsed_s=time.perf_counter() - started,
        )
        assert result.kept + result.heldout + result.rejected == result.rows_read, "every row is accounted for"
        write_json(staging / MANIFEST_FILE, _manifest(config, inputs, outcome, shards, result))
    logger.info("preprocessing done: %s", result.summary())
    return result


def process_clips(clips: list[ClipRow], limits: ClipLimits, mel: MelConfig, num_workers: int | None) -> pa.Table:
    """Decode, check, resample and mel every clip on the Ray cluster -> one PROCESSED_SCHEMA table."""
    if not clips:
        return PROCESSED_SCHEMA.empty_table()
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    workers = min(num_workers or max(1, int(cluster_cpus)), math.ceil(len(clips) / MIN_ROWS_PER_WORKER))
    blocks = min(len(clips), max(math.ceil(len(clips) / MAX_ROWS_PER_BLOCK), BLOCKS_PER_WORKER * workers))
    dataset = ray.data.from_items([asdict(clip) for clip in clips], override_num_blocks=blocks)
    dataset = dataset.map_batches(
        process_batch,
        fn_kwargs={"limits": limits, "mel": mel},
        batch_format="pyarrow",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=min(1.0, cluster_cpus / workers),
    )
    tables = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables([table.cast(PROCESSED_SCHEMA) for table in tables])


def _read_inputs(config: PreprocessConfig) -> _Inputs:
    metadata_path = config.metadata_path
    table = read_metadata(metadata_path, config.format)
    files = [("metadata", metadata_path.read_bytes())]
    speakers_path = Path(config.corpus) / SPEAKERS_FILE
    speakers = {}
    if speakers_path.is_file():
        speakers = read_speakers(speakers_path)
        files.append(("speakers", speakers_path.read_bytes()))
    files += [
        (role, path.read_bytes())
        for role, path in (("vocab", config.vocab), ("holdout_list", config.holdout_list))
        if path
    ]
    checked = check_rows(table.rows, Path(config.corpus), speakers, TEXT_FRONTENDS[config.text_frontend])
    return _Inputs(checked.clips, table.rejections + checked.rejections, table.rows_read, table.format, files)


def _split_outcome(processed: pa.Table, inputs: _Inputs, config: PreprocessConfig) -> _Outcome:
    kept = processed.filter(pc.is_null(processed["reason"]))
    choice = _choose_heldout(kept, config)
    vocab, missing = _build_vocab(kept["text"].to_pylist(), config.vocab)
    in_heldout = pa.array([clip_key(a) in choice.audio_files for a in kept["audio_file"].to_pylist()], pa.bool_())
    hashed = processed.filter(pc.not_equal(processed["sha256"], ""))
    return _Outcome(
        train=sort_by_length(kept.filter(pc.invert(in_heldout)).select(SHARD_SCHEMA.names)),
        heldout=sort_by_length(kept.filter(in_heldout).select(SHARD_SCHEMA.names)),
        rejections=inputs.rejections + _worker_rejections(processed),
        heldout_unmatched=choice.unmatched,
        vocab=vocab,
        missing_characters=missing,
        audio_hashes=list(
            zip(map(clip_key, hashed["audio_file"].to_pylist()), hashed["sha256"].to_pylist(), strict=True)
        ),
    )


def _write_outputs(staging: Path, outcome: _Outcome, config: PreprocessConfig) -> dict[str, list[ShardInfo]]:
    """Shards (no heldout/ folder when nothing is held out), vocab and rejection report."""
    target_bytes = int(config.shard_mb * 2**20)
    shards = {TRAIN_DIR: write_shards(outcome.train, staging, TRAIN_DIR, target_bytes)}
    if outcome.heldout.num_rows:
        shards[HELDOUT_DIR] = write_shards(outcome.heldout, staging, HELDOUT_DIR, target_bytes)
    outcome.vocab.save(staging / VOCAB_FILE)
    write_rejections(staging / REJECTED_FILE, outcome.rejections)
    return shards


def _total_seconds(table: pa.Table) -> float:
    return float(pc.sum(table["duration"]).as_py() or 0.0)


def _worker_rejections(processed: pa.Table) -> list[Rejection]:
    rejected = processed.filter(pc.is_valid(processed["reason"])).select(["line", "audio_file", "reason", "detail"])
    return [Rejection(r["line"], r["audio_file"], Reason(r["reason"]), r["detail"]) for r in rejected.to_pylist()]


def _choose_heldout(kept: pa.Table, config: PreprocessConfig) -> HeldoutChoice:
    audio_files = kept["audio_file"].to_pylist()
    if config.holdout_list:
        return heldout_by_list(audio_files, read_holdout_list(Path(config.holdout_list)))
    speakers = dict(zip(audio_files, kept["speaker"].to_pylist(), strict=True))
    return heldout_by_fraction(speakers, config.holdout_fraction, config.seed)


def _build_vocab(texts: list[str], base_path: Path | None) -> tuple[Vocab, list[str]]:
    """The vocab and the characters a given vocab lacked (added at its end, in code point order)."""
    if base_path is None:
        return Vocab.from_texts(texts), []
    base = Vocab.load(base_path)
    missing = sorted({char for text in texts for char in base.missing(text)})
    vocab, added = base.extend(missing)
    return vocab, added


def _count_reasons(rejections: list[Rejection]) -> dict[str, int]:
    counts = Counter(str(r.reason) for r in rejections)
    return {str(reason): counts.get(str(reason), 0) for reason in Reason}


def _manifest(
    config: PreprocessConfig,
    inputs: _Inputs,
    outcome: _Outcome,
    shards: dict[str, list[ShardInfo]],
    result: PreprocessResult,
) -> dict:
    kept = pa.concat_tables([outcome.train, outcome.heldout])
    durations = kept["duration"].to_pylist()
    return {
        "flowtts_version": flowtts.__version__,
        "inputs": {
            "corpus": str(Path(config.corpus).resolve()),
            "metadata": str(config.metadata_path.resolve()),
            "format": inputs.format,
            "speakers_file": any(role == "speakers" for role, _ in inputs.files),
            "fingerprint_sha256": input_fingerprint(inputs.files, outcome.audio_hashes),
        },
        "settings": {
            "min_duration_s": config.min_duration,
            "max_duration_s": config.max_duration,
            "silence_peak": SILENCE_PEAK,
            "text_frontend": config.text_frontend,
            "seed": config.seed,
            "shard_mb": config.shard_mb,
        },
        "counts": {
            "rows_read": result.rows_read,
            "kept": result.kept + result.heldout,
            "train": result.kept,
            "heldout": result.heldout,
            "rejected": result.rejected,
            "rejected_by_reason": result.rejected_by_reason,
        },
        "hours": {
            "total": round(result.audio_hours, 6),
            "train": round(_total_seconds(outcome.train) / SECONDS_PER_HOUR, 6),
            "heldout": round(_total_seconds(outcome.heldout) / SECONDS_PER_HOUR, 6),
            "per_speaker": hours_per_speaker(kept["speaker"].to_pylist(), durations),
        },
        "duration_histogram": duration_histogram(durations, config.max_duration),
        "heldout": {
            "method": "list" if config.holdout_list else "fraction" if config.holdout_fraction else "none",
            "fraction": config.holdout_fraction,
            "seed": config.seed,
            "list": str(config.holdout_list) if config.holdout_list else None,
            "audio_files": sorted(outcome.heldout["audio_file"].to_pylist()),
            "unmatched_list_entries": outcome.heldout_unmatched,
        },
        "mel": mel_settings(config.mel),
        "vocab": {
            "file": VOCAB_FILE,
            "source": str(config.vocab) if config.vocab else "built from the kept texts",
            "size": len(outcome.vocab),
            "missing_characters": outcome.missing_characters,
        },
        "shards": {split: [asdict(info) for info in infos] for split, infos in shards.items()},
        "elapsed_s": round(result.elapsed_s, 3),
    }
