"""The input of batch synthesis: a CSV, JSONL or Parquet file of utterances, read as a stream.

One row per utterance: ``id`` (required, unique, a safe file name), ``text`` (required; ``[name]`` voice
tags allowed), a voice as ``voice`` (a stored voice's name or id) or ``ref_audio`` + ``ref_text`` (a path
relative to the input file's folder, or a URI), and optionally ``seed``, ``speed`` and ``nfe``. Other
columns are ignored. Every value is read as text (an id ``007`` stays ``007``) and checked later, per row.

The driver reads the file in pieces (``READ_CHUNK_BYTES`` of CSV or JSONL, ``PARQUET_BATCH_ROWS`` rows of
Parquet), numbers the rows (1 = the first data row), does the checks that need no model (the id) and
writes the rows as Parquet parts (``part_rows``) that Ray Data reads in parallel. Of the input it keeps
only an 8-byte hash of each id, to find duplicates (8 MB per million rows); the texts are never held.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flowtts.storage import Location

COLUMNS = ("id", "text", "voice", "ref_audio", "ref_text", "seed", "speed", "nfe")
ROW_SCHEMA = pa.schema(
    [("row", pa.int64()), *[(name, pa.string()) for name in COLUMNS], ("reason", pa.string()), ("message", pa.string())]
)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
READ_CHUNK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 4096
FIRST_PART_ROWS, MAX_PART_ROWS = 8, 1024
MAX_ID_LENGTH = 128
SAFE_ID = re.compile(r"^\w[\w.-]*$")  # letters, digits, _ . - ; never a separator, never hidden or '..'


class InputError(ValueError):
    """The input as a whole cannot be read (format, missing required column); the message names it."""


@dataclass(frozen=True)
class StagedInput:
    rows: int
    parts: int
    duplicates: frozenset[str]  # ids on more than one row (every such row is refused)


def input_format(location: Location) -> str:
    suffix = "." + location.name.rpartition(".")[2].lower() if "." in location.name else ""
    if suffix not in FORMATS:
        raise InputError(
            f"input {location}: unknown format {suffix or '(no extension)'!r}; use .csv, .jsonl or .parquet"
        )
    return FORMATS[suffix]


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot name an output file, or None."""
    if not value.strip():
        return "the id is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"the id is longer than {MAX_ID_LENGTH} characters"
    if not SAFE_ID.match(value):
        return (
            f"the id {value!r} is not a safe file name (letters, digits, '_', '.', '-'; starting with neither . nor -)"
        )
    return None


def part_rows(index: int) -> int:
    """Rows of staged part ``index``: 8, 16, 32, ... up to 1024. A part is a Ray Data block, the unit an
    actor takes, so a small input still spreads over every actor and a large one is not a million files."""
    return min(FIRST_PART_ROWS << min(index, 16), MAX_PART_ROWS)


def stage_rows(source: Location, parts: Location) -> StagedInput:
    """Read ``source`` piece by piece and write its rows, numbered and with their id checked, as
    ``parts/part-NNNNN.parquet``; find the ids on more than one row."""
    rows, written, pending = 0, 0, []
    hashes: list[np.ndarray] = []  # 8 bytes per row: all the driver keeps of the input
    for records in _read_records(source):
        for record in records:
            rows += 1
            pending.append(_row(rows, record))
            if len(pending) == part_rows(written):
                hashes.append(_id_hashes(pending))
                _write_part(parts, written, pending)
                written, pending = written + 1, []
    if pending or not written:
        hashes.append(_id_hashes(pending))
        _write_part(parts, written, pending)
        written += 1
    return StagedInput(rows=rows, parts=written, duplicates=_duplicates(parts, np.concatenate(hashes)))


def _id_hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def _id_hashes(rows: list[dict]) -> np.ndarray:
    return np.array([_id_hash(row["id"]) for row in rows if not row["reason"]], dtype=np.uint64)


def _duplicates(parts: Location, hashes: np.ndarray) -> frozenset[str]:
    """The ids on more than one row: the rows whose id hash repeats are read again and their ids counted,
    so a hash collision costs a second look, never a wrong rejection."""
    values, counts = np.unique(hashes, return_counts=True)
    repeated = {int(value) for value in values[counts > 1]}
    if not repeated:
        return frozenset()
    seen: Counter[str] = Counter()
    for part in sorted(parts.files(".parquet"), key=lambda location: location.name):
        with part.open_input() as stream:
            table = pq.read_table(stream, columns=["id", "reason"])
        for row_id, reason in zip(table["id"].to_pylist(), table["reason"].to_pylist(), strict=True):
            if not reason and _id_hash(row_id) in repeated:
                seen[row_id] += 1
    return frozenset(row_id for row_id, count in seen.items() if count > 1)


def _row(number: int, record: dict | str) -> dict:
    """A row of ROW_SCHEMA; ``record`` is the row's values, or why the row could not be read."""
    if isinstance(record, str):
        return {"row": number, **dict.fromkeys(COLUMNS, ""), "reason": "malformed_row", "message": record}
    values = {name: _text(record.get(name)) for name in COLUMNS}
    problem = id_problem(values["id"])
    return {"row": number, **values, "reason": "bad_id" if problem else "", "message": problem or ""}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)


def _write_part(parts: Location, index: int, rows: list[dict]) -> None:
    with parts.join(f"part-{index:05d}.parquet").open_output() as stream:
        pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), stream)


def _read_records(source: Location) -> Iterator[list[dict | str]]:
    """The input's records in order, a piece at a time; a record that cannot be parsed is a message."""
    fmt = input_format(source)
    with source.open_input() as stream:
        if fmt == "csv":
            yield from _csv_records(stream, source)
        elif fmt == "jsonl":
            yield from _jsonl_records(stream)
        else:
            yield from _parquet_records(stream, source)


def _require(names: list[str], source: Location) -> None:
    missing = [name for name in ("id", "text") if name not in names]
    if missing:
        raise InputError(f"input {source} has no {' or '.join(missing)} column (columns: {', '.join(names) or 'none'})")


def _csv_records(stream, source: Location) -> Iterator[list[dict | str]]:
    try:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=READ_CHUNK_BYTES),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(COLUMNS, pa.string()), strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        raise InputError(f"input {source}: not a readable CSV file ({exc})") from exc
    _require(reader.schema.names, source)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:  # pyarrow stops at a malformed line: the rows after it are not read
            raise InputError(f"input {source}: {exc}") from exc
        yield batch.to_pylist()


def _jsonl_records(stream) -> Iterator[list[dict | str]]:
    rest = b""
    first = True
    while True:
        data = stream.read(READ_CHUNK_BYTES)
        text, _, rest = (rest + data).rpartition(b"\n") if data else (rest, b"", b"")
        records: list[dict | str] = []
        for line in text.split(b"\n") if text else []:
            if first:
                line, first = line.removeprefix(b"\xef\xbb\xbf"), False
            if line.strip():
                records.append(_json_record(line))
        yield records
        if not data:
            return


def _json_record(line: bytes) -> dict | str:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not a JSON object: {exc}"
    return value if isinstance(value, dict) else f"not a JSON object: {type(value).__name__}"


def _parquet_records(stream, source: Location) -> Iterator[list[dict | str]]:
    try:
        reader = pq.ParquetFile(stream)
    except pa.ArrowInvalid as exc:
        raise InputError(f"input {source}: not a readable Parquet file ({exc})") from exc
    names = reader.schema_arrow.names
    _require(names, source)
    wanted = [name for name in COLUMNS if name in names]
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        yield batch.to_pylist()
