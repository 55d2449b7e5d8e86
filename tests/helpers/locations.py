"""Test helper: copying a local folder to a storage location (S3 on loopback in the tests) and reading a dataset's
shards back as bytes, to compare two preprocessing runs byte for byte."""

from __future__ import annotations

from pathlib import Path

from flowtts.storage import Location


def upload(folder: Path, target: Location) -> Location:
    """Every file under ``folder`` to the same relative path under ``target``; returns ``target``."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target.join(path.relative_to(folder).as_posix()).write_bytes(path.read_bytes())
    return target


def shard_bytes(out: Location) -> dict[str, bytes]:
    """The parquet files of a dataset (``shards/``, ``heldout/``) by path relative to it."""
    return {f.relative_to(out): f.read_bytes() for f in out.files(".parquet", recursive=True)}
