"""Output writing: length-sorted Parquet shards, the rejection report, and the atomic output folder or prefix
(a local path or any ``flowtts.storage`` URI).

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
from flowtts.shards import MANIFEST_FILE, SHARD_SCHEMA
from flowtts.storage import Location

SHARD_NAME = "shard-{index:05d}.parquet"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "row_group_size": 64}  # <= 36 MB of 30 s clips


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


def write_shards(table: pa.Table, out: Location, split: str, target_bytes: int) -> list[ShardInfo]:
    """Write ``table`` (SHARD_SCHEMA, already sorted) as ``out/split/shard-NNNNN.parquet``."""
    shards = []
    for index, part in enumerate(split_by_size(table.cast(SHARD_SCHEMA), target_bytes)):
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, **PARQUET_OPTIONS)
        data = sink.getvalue().to_pybytes()
        name = f"{split}/{SHARD_NAME.format(index=index)}"
        out.join(name).write_bytes(data)
        shards.append(ShardInfo(name, part.num_rows, len(data)))
    return shards


def write_rejections(path: Location, rejections: Iterable[Rejection]) -> None:
    ordered = sorted(rejections, key=lambda r: (r.line, r.audio_file))
    path.write_text("".join(json.dumps(r.to_json_dict(), ensure_ascii=False) + "\n" for r in ordered))


def write_json(path: Location, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def check_output_target(out: Location, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} exists; pass --overwrite to replace it")
    if out.is_file():
        raise OutputExistsError(f"output {out} exists and is not a folder")


@contextmanager
def staged_output(out: Location, overwrite: bool) -> Iterator[Location]:
    """Yield an empty staging folder beside ``out`` to build in; on success it replaces ``out``, on error it
    is removed and ``out`` is left as it was.

    On a local (or mounted) filesystem the staging folder replaces ``out`` by renames, so ``out`` is never
    seen half-written. Object stores (S3, GCS) have no rename: the staging prefix is copied into place
    object by object (server-side copies) with ``manifest.json`` last, after the old output's manifest
    was deleted first. The manifest is the commit marker: a dataset is complete exactly when it has one.
    """
    check_output_target(out, overwrite)
    staging = out.sibling(f".{out.name}.staging-{uuid.uuid4().hex}")
    staging.make_dir()  # local: not mkdtemp, so the output gets the umask's permissions, not 0700
    try:
        yield staging
        check_output_target(out, overwrite)  # it may have appeared while we worked
        if out.is_local:
            _swap_in(staging.local_path(), out.local_path())
        else:
            _copy_in(staging, out)
    finally:
        staging.delete_dir()


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    retired = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex}"
    os.rename(out, retired)
    os.rename(staging, out)
    shutil.rmtree(retired)


def _copy_in(staging: Location, out: Location) -> None:
    out.join(MANIFEST_FILE).delete_file()  # uncommit the old output before any of its files change
    out.delete_dir()
    files = sorted(staging.files(recursive=True), key=lambda f: f.relative_to(staging) == MANIFEST_FILE)
    for staged in files:  # the manifest last
        staged.copy_file_to(out.join(staged.relative_to(staging)))
