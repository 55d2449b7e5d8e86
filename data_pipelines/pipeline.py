"""The preprocessing pipeline: corpus -> validated 24 kHz log-mel shards, vocab, report, manifest.

Corpus, output, metadata, vocab and held-out list are local paths or URIs (``flowtts.storage``). The
driver reads the metadata (small: one row per clip) and does the checks that need no audio; reading the
audio, decoding, checks on the signal, resampling and mel run in parallel as a Ray Data ``map_batches``
over a task pool. Kept clips and rejections come back in one dataset and are split on the driver, which sorts
and writes the output into a staging folder that replaces ``out`` only when everything succeeded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    ClipRow,
    MetadataFormat,
    Normalizer,
    Reason,
    Rejection,
    check_rows,
    clip_key,
    read_metadata,
    read_speakers,
)
from data_pipelines.splitting import HeldoutChoice, heldout_by_fraction, heldout_by_list, read_holdout_list
from data_pipelines.writing import (
    ShardInfo,
    check_output_target,
    sort_by_length,
    staged_output,
    write_json,
    write_rejections,
    write_shards,
)
from flowtts.config import MelConfig
from flowtts.shards import HELDOUT_DIR, MANIFEST_FILE, REJECTED_FILE, SHARD_SCHEMA, TRAIN_DIR, VOCAB_FILE
from flowtts.storage import Location, StorageUri, resolve
from flowtts.text import TextFrontend, Vocab

logger = logging.getLogger(__name__)

MAX_ROWS_PER_BLOCK = 64
"""Clips per Ray Data block (one task each) at most: about 3 min of audio, a few seconds of work."""
BLOCKS_PER_WORKER = 4
"""At least this many blocks per worker, so the last blocks balance out between workers."""
MIN_ROWS_PER_WORKER = 16
"""Fewer workers for tiny corpora: each worker process pays a torch import (seconds) before its first clip."""
SPEAKERS_FILE = "speakers.csv"
METADATA_FILE = "metadata.csv"


class PreprocessConfig(BaseModel):
    """Every preprocessing option, declared once: ``jobs/preprocess.py`` builds its command line from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: StorageUri = Field(description="corpus folder or URI (s3://...); audio paths are relative to it")
    out: StorageUri = Field(description="output folder or URI (refused when it exists, unless --overwrite)")
    metadata: StorageUri | None = Field(None, description="metadata file (default: CORPUS/metadata.csv)")
    format: MetadataFormat = Field("auto", description="metadata format")
    min_duration: float = Field(0.3, ge=0, description="shortest clip kept, seconds")
    max_duration: float = Field(30.0, gt=0, description="longest clip kept, seconds")
    vocab: StorageUri | None = Field(None, description="extend this vocab.txt instead of building one")
    text_frontend: Normalizer = Field("plain", description="text normalisation")
    lowercase: bool = Field(False, description="lowercase the texts after the normaliser")
    num_workers: int | None = Field(None, ge=1, description="parallel decode/mel tasks (default: cluster CPUs)")
    seed: int = Field(0, description="seed of the held-out choice")
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="share of each speaker held out")
    holdout_list: StorageUri | None = Field(None, description="file with one held-out audio_file per line")
    shard_mb: float = Field(128.0, gt=0, description="target shard size in MiB")
    overwrite: bool = Field(False, description="replace an existing output atomically")
    mel: MelConfig = Field(default_factory=MelConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessConfig:
        if self.corpus == self.out or self.corpus.startswith(self.out.rstrip("/") + "/"):
            raise ValueError(f"output {self.out} would contain the corpus {self.corpus}; choose another")
        if self.holdout_fraction and self.holdout_list:
            raise ValueError("give either holdout_fraction or holdout_list, not both")
        self.limits  # noqa: B018 - ClipLimits validates the duration range
        return self

    @property
    def metadata_path(self) -> Location:
        return resolve(self.metadata) if self.metadata else resolve(self.corpus).join(METADATA_FILE)

    @property
    def limits(self) -> ClipLimits:
        return ClipLimits(self.min_duration, self.max_duration)

    @property
    def frontend(self) -> TextFrontend:
        """What the texts go through; recorded in the manifest, and by training in the model's metadata."""
        return TextFrontend(normalizer=self.text_frontend, lowercase=self.lowercase)


def check_locations(config: PreprocessConfig) -> None:
    """What can be checked before any work: the corpus is there and the output may be written. Raises
    ``FileNotFoundError``, ``OutputExistsError`` or ``StorageError`` (missing bucket, no access), each naming
    the URI."""
    corpus, out = resolve(config.corpus), resolve(config.out)
    if not corpus.is_dir():
        _check_bucket("corpus", corpus)
        raise FileNotFoundError(f"corpus folder {corpus} does not exist")
    check_output_target(out, config.overwrite)
    _check_bucket("output", out)


def _check_bucket(role: str, location: Location) -> None:
    if not location.store_root().exists():
        raise FileNotFoundError(f"{role} {location}: bucket {location.store_root()} does not exist")


@dataclass(frozen=True)
class PreprocessResult:
    out: str
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
    check_locations(config)
    with staged_output(resolve(config.out), config.overwrite) as staging:
        inputs = _read_inputs(config)
        processed = process_clips(inputs.clips, resolve(config.corpus), config.limits, config.mel, config.num_workers)
        outcome = _split_outcome(processed, inputs, config)
        shards = _write_outputs(staging, outcome, config)
        result = PreprocessResult(
            out=config.out,
            rows_read=inputs.rows_read,
            kept=outcome.train.num_rows,
            heldout=outcome.heldout.num_rows,
            rejected=len(outcome.rejections),
            rejected_by_reason=_count_reasons(outcome.rejections),
            audio_hours=(_total_seconds(outcome.train) + _total_seconds(outcome.heldout)) / SECONDS_PER_HOUR,
            elapsed_s=time.perf_counter() - started,
        )
        assert result.kept + result.heldout + result.rejected == result.rows_read, "every row is accounted for"
        write_json(staging.join(MANIFEST_FILE), _manifest(config, inputs, outcome, shards, result))
    logger.info("preprocessing done: %s", result.summary())
    return result


def process_clips(
    clips: list[ClipRow], corpus: Location, limits: ClipLimits, mel: MelConfig, num_workers: int | None
) -> pa.Table:
    """Read, decode, check, resample and mel every clip on the Ray cluster -> one PROCESSED_SCHEMA table.
    The tasks read the audio from ``corpus`` themselves (it travels as its URI)."""
    if not clips:
        return PROCESSED_SCHEMA.empty_table()
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    workers = min(num_workers or max(1, int(cluster_cpus)), math.ceil(len(clips) / MIN_ROWS_PER_WORKER))
    blocks = min(len(clips), max(math.ceil(len(clips) / MAX_ROWS_PER_BLOCK), BLOCKS_PER_WORKER * workers))
    dataset = ray.data.from_items([asdict(clip) for clip in clips], override_num_blocks=blocks)
    dataset = dataset.map_batches(
        process_batch,
        fn_kwargs={"corpus": corpus, "limits": limits, "mel": mel},
        batch_format="pyarrow",
        batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=workers),
        num_cpus=min(1.0, cluster_cpus / workers),
    )
    tables = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables([table.cast(PROCESSED_SCHEMA) for table in tables])


def _read_inputs(config: PreprocessConfig) -> _Inputs:
    """The small input files only (metadata, speakers, vocab, held-out list): the audio is read by the tasks."""
    metadata_path = config.metadata_path
    table = read_metadata(metadata_path, config.format)
    files = [("metadata", metadata_path.read_bytes())]
    speakers_path = resolve(config.corpus).join(SPEAKERS_FILE)
    speakers = {}
    if speakers_path.is_file():
        speakers = read_speakers(speakers_path)
        files.append(("speakers", speakers_path.read_bytes()))
    files += [
        (role, resolve(uri).read_bytes())
        for role, uri in (("vocab", config.vocab), ("holdout_list", config.holdout_list))
        if uri
    ]
    checked = check_rows(table.rows, speakers, config.frontend)
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


def _write_outputs(staging: Location, outcome: _Outcome, config: PreprocessConfig) -> dict[str, list[ShardInfo]]:
    """Shards (no heldout/ folder when nothing is held out), vocab and rejection report."""
    target_bytes = int(config.shard_mb * 2**20)
    shards = {TRAIN_DIR: write_shards(outcome.train, staging, TRAIN_DIR, target_bytes)}
    if outcome.heldout.num_rows:
        shards[HELDOUT_DIR] = write_shards(outcome.heldout, staging, HELDOUT_DIR, target_bytes)
    staging.join(VOCAB_FILE).write_text(outcome.vocab.serialize())
    write_rejections(staging.join(REJECTED_FILE), outcome.rejections)
    return shards


def _total_seconds(table: pa.Table) -> float:
    return float(pc.sum(table["duration"]).as_py() or 0.0)


def _worker_rejections(processed: pa.Table) -> list[Rejection]:
    rejected = processed.filter(pc.is_valid(processed["reason"])).select(["line", "audio_file", "reason", "detail"])
    return [Rejection(r["line"], r["audio_file"], Reason(r["reason"]), r["detail"]) for r in rejected.to_pylist()]


def _choose_heldout(kept: pa.Table, config: PreprocessConfig) -> HeldoutChoice:
    audio_files = kept["audio_file"].to_pylist()
    if config.holdout_list:
        return heldout_by_list(audio_files, read_holdout_list(resolve(config.holdout_list)))
    speakers = dict(zip(audio_files, kept["speaker"].to_pylist(), strict=True))
    return heldout_by_fraction(speakers, config.holdout_fraction, config.seed)


def _build_vocab(texts: list[str], base_uri: str | None) -> tuple[Vocab, list[str]]:
    """The vocab and the characters a given vocab lacked (added at its end, in code point order)."""
    if base_uri is None:
        return Vocab.from_texts(texts), []
    base = Vocab.parse(resolve(base_uri).read_text())
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
            "corpus": config.corpus,
            "metadata": config.metadata_path.uri,
            "format": inputs.format,
            "speakers_file": any(role == "speakers" for role, _ in inputs.files),
            "fingerprint_sha256": input_fingerprint(inputs.files, outcome.audio_hashes),
        },
        "settings": {
            "min_duration_s": config.min_duration,
            "max_duration_s": config.max_duration,
            "silence_peak": SILENCE_PEAK,
            "text_frontend": config.text_frontend,
            "lowercase": config.lowercase,
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
            "list": config.holdout_list,
            "audio_files": sorted(outcome.heldout["audio_file"].to_pylist()),
            "unmatched_list_entries": outcome.heldout_unmatched,
        },
        "mel": mel_settings(config.mel),
        "vocab": {
            "file": VOCAB_FILE,
            "source": config.vocab or "built from the kept texts",
            "size": len(outcome.vocab),
            "missing_characters": outcome.missing_characters,
        },
        "shards": {split: [asdict(info) for info in infos] for split, infos in shards.items()},
        "elapsed_s": round(result.elapsed_s, 3),
    }
