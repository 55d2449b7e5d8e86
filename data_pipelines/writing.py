"""Output writing: length-sorted Parquet shards, the rejection report, and the atomic output folder.

The shards are written by pyarrow on the driver after a global sort, so the output is identical across
runs whatever order the workers finished in. That holds the whole kept corpus (mostly float16 mels, about
67 MB per hour of audio) in driver memory; for corpora of hundreds of hours the write would move to Ray's
``Dataset.sort(...).write_parquet(...)`` with a deterministic ``filename_provider``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipelines.reading import Rejection
from flowtts.shards import SHARD_SCHEMA

SHARD_NAME = "shard-{index:05d}.parquet"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "row_group_size": 256}


class OutputExistsError(FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""


@dataclass(frozen=True)
class ShardInfo:
    file: str  # relative to the output folder
    rows: int
    bytes: int


def sort_by_length(table: pa.Table) -> pa.Table:
    """Rows ordered by ``n_frames`` then ``audio_file``: a total, content-defined order."""
    return table.take(pc.sort_indices(table, [("n_frames", "ascending"), ("audio_file", "ascending")]))


def split_by_size(table: pa.Table, target_bytes: int) -> list[pa.Table]:
    """Consecutive slices whose mel payload reaches ``target_bytes`` (the last one may be smaller)."""
    sizes = pc.binary_length(table["mel"]).to_pylist()
    slices, start, filled = [], 0, 0
    for index, size in enumerate(sizes):
        filled += size
        if filled >= target_bytes:
            slices.append(table.slice(start, index + 1 - start))
            start, filled = index + 1, 0
    if start < table.num_rows or not slices:
        slices.append(table.slice(start))
    return slices


def write_shards(table: pa.Table, out: Path, split: str, target_bytes: int) -> list[ShardInfo]:
    """Write ``table`` (SHARD_SCHEMA, already sorted) as ``out/split/shard-NNNNN.parquet``."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, part in enumerate(split_by_size(table.cast(SHARD_SCHEMA), target_bytes)):
        path = folder / SHARD_NAME.format(index=index)
        pq.write_table(part, path, **PARQUET_OPTIONS)
        shards.append(ShardInfo(f"{split}/{path.name}", part.num_rows, path.stat().st_size))
    return shards


def write_rejections(path: Path, rejections: Iterable[Rejection]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for rejection in sorted(rejections, key=lambda r: (r.line, r.audio_file)):
            f.write(json.dumps(rejection.to_json_dict(), ensure_ascii=False) + "\n")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_output_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a folder")


@contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty sibling folder to build in; on success it replaces ``out`` by renames, on error it
    is removed and ``out`` is left as it was. ``out`` is never seen half-written."""
    check_output_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()  # not mkdtemp: the output gets the umask's permissions, not 0700
    try:
        yield staging
        _swap_in(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    check_output_target(out, overwrite)  # it may have appeared while we worked
    retired = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex}"
    os.rename(out, retired)
    os.rename(staging, out)
    shutil.rmtree(retired)
