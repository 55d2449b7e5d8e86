"""Reading a corpus on the driver: metadata and speakers files, row checks that need no audio.

The driver reads only these small files (a local path or any ``flowtts.storage`` URI); whether each clip
exists and decodes is found out where its audio is read, in the Ray Data tasks (``processing``), so local
and remote corpora give the same rejections.

Formats:
- ``f5``: header ``audio_file|text``, Python ``csv`` dialect with ``|`` as delimiter and the default quote
  character, so a quoted field may hold ``|`` and ``""`` (one ``"``), as upstream F5-TTS reads it; strict, so
  a text that starts with ``"`` but is not a well-formed quoted field is a malformed row (quote the whole
  field and double the inner quotes), not silently altered.
- ``ljspeech``: headerless ``id|text|normalized_text`` (``normalized_text`` optional and preferred when
  non-empty), audio at ``wavs/<id>.wav``. Read without quote processing (``csv.QUOTE_NONE``), as LJSpeech
  transcripts may start with a ``"`` that is part of the text.
UTF-8 with or without BOM, LF or CRLF. Line numbers are 1-based physical lines of the file (header = 1).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from flowtts.storage import Location, StorageError

MetadataFormat = Literal["auto", "f5", "ljspeech"]
Normalizer = Literal["plain", "vietnamese"]
F5_HEADER = ["audio_file", "text"]
SPEAKERS_HEADER = ["audio_file", "speaker"]
DEFAULT_SPEAKER = "default"
# strict: a field like `"Hi," she said` (a quote that opens a field but does not close it) is an error,
# reported as a malformed row, where the lenient default would silently drop the quote characters.
F5_DIALECT = {"delimiter": "|", "strict": True}
LJSPEECH_DIALECT = {"delimiter": "|", "quoting": csv.QUOTE_NONE}


class Reason(StrEnum):
    """Stable rejection codes written to ``rejected.jsonl``."""

    MALFORMED_ROW = "malformed_row"
    EMPTY_TEXT = "empty_text"
    PATH_OUTSIDE_CORPUS = "path_outside_corpus"
    MISSING_FILE = "missing_file"
    UNREADABLE_AUDIO = "unreadable_audio"
    TRUNCATED_AUDIO = "truncated_audio"
    SILENT = "silent"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    DUPLICATE_ROW = "duplicate_row"


class MetadataError(ValueError):
    """A metadata or speakers file that cannot be read at all (names the file and the problem)."""


class RowRejected(Exception):
    """Raised by a row check; the row is reported with this reason and detail and processing goes on."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # pickle (Ray) rebuilds it from the constructor's arguments
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class Rejection:
    line: int
    audio_file: str
    reason: Reason
    detail: str

    def to_json_dict(self) -> dict:
        return {
            "line": self.line,
            "audio_file": self.audio_file,
            "reason": str(self.reason),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class MetadataRow:
    """One parsed data row: ``audio_file`` as written (LJSpeech: ``wavs/<id>.wav``), text as written."""

    line: int
    audio_file: str
    text: str


@dataclass(frozen=True)
class ClipRow:
    """A row that passed the driver checks and goes to decoding (its file is ``corpus/clip_key(audio_file)``)."""

    line: int
    audio_file: str
    text: str
    speaker: str


@dataclass(frozen=True)
class MetadataTable:
    format: Literal["f5", "ljspeech"]
    rows: list[MetadataRow]
    rejections: list[Rejection]

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.rejections)


@dataclass(frozen=True)
class DriverChecks:
    """Rows for decoding plus the rows the driver already rejected."""

    clips: list[ClipRow]
    rejections: list[Rejection]


def read_metadata(path: Location, fmt: MetadataFormat = "auto") -> MetadataTable:
    """Parse the metadata file; bad rows become ``malformed_row`` rejections, never exceptions."""
    text = _decode_file(path)
    detected = _detect_format(path, _first_line(text), fmt)
    dialect = F5_DIALECT if detected == "f5" else LJSPEECH_DIALECT
    records = _records(text, dialect)
    if detected == "f5":
        next(records)  # the header, checked by _detect_format
    rows: list[MetadataRow] = []
    rejections: list[Rejection] = []
    for record in records:
        try:
            rows.append(_parse_row(record, detected))
        except RowRejected as rejected:
            audio_file = _readable(record.fields[0]).strip() if record.fields else ""
            rejections.append(Rejection(record.line, audio_file, rejected.reason, rejected.detail))
    return MetadataTable(detected, rows, rejections)


def read_speakers(path: Location) -> dict[str, str]:
    """``speakers.csv`` (header ``audio_file|speaker``) -> {normalised audio_file: speaker}."""
    text = _decode_file(path)
    records = _records(text, F5_DIALECT)
    header = next(records, _Record(1, []))
    if [h.strip().lower() for h in header.fields] != SPEAKERS_HEADER:
        shown = "|".join(header.fields)
        raise MetadataError(f"{path}: line 1 is {shown!r}, expected the header 'audio_file|speaker'")
    speakers: dict[str, str] = {}
    for record in records:
        fields = record.fields
        if record.error or len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            shown = record.error or "|".join(fields)
            raise MetadataError(f"{path}:{record.line}: expected 'audio_file|speaker', got {shown!r}")
        speakers[clip_key(fields[0].strip())] = _readable(fields[1]).strip()
    return speakers


def check_rows(rows: list[MetadataRow], speakers: dict[str, str], normalize: Callable[[str], str]) -> DriverChecks:
    """Duplicates, text normalisation and emptiness, and the path's spelling, in that order for each row."""
    seen: dict[str, int] = {}
    clips: list[ClipRow] = []
    rejections: list[Rejection] = []
    for row in rows:
        try:
            key = clip_key(row.audio_file)
            if key in seen:
                raise RowRejected(Reason.DUPLICATE_ROW, f"{row.audio_file} already appears on line {seen[key]}")
            seen[key] = row.line
            text = normalize(row.text)
            if not text:
                raise RowRejected(Reason.EMPTY_TEXT, "the text is empty after normalisation")
            check_clip_path(row.audio_file)
        except RowRejected as rejected:
            rejections.append(Rejection(row.line, row.audio_file, rejected.reason, rejected.detail))
            continue
        speaker = speakers.get(clip_key(row.audio_file), DEFAULT_SPEAKER)
        clips.append(ClipRow(row.line, row.audio_file, text, speaker))
    return DriverChecks(clips, rejections)


def clip_key(audio_file: str) -> str:
    """A clip's identity: its path relative to the corpus, lexically normalised (``./a.wav`` is ``a.wav``)."""
    return os.path.normpath(audio_file)


def check_clip_path(audio_file: str) -> None:
    """A path relative to the corpus that stays inside it (links are followed where the clip is read)."""
    if os.path.isabs(audio_file) or "://" in audio_file:
        raise RowRejected(Reason.PATH_OUTSIDE_CORPUS, f"absolute path {audio_file!r}; paths must be relative")
    relative = clip_key(audio_file)
    if relative == ".." or relative.startswith(f"..{os.sep}"):
        raise RowRejected(Reason.PATH_OUTSIDE_CORPUS, f"{audio_file!r} escapes the corpus folder with '..'")


def _decode_file(path: Location) -> str:
    """UTF-8 (BOM dropped); undecodable bytes survive as surrogates so only their rows get rejected."""
    try:
        raw = path.read_bytes()
    except StorageError as exc:
        raise MetadataError(str(exc)) from exc  # names the file and what the store said
    return raw.decode("utf-8-sig", errors="surrogateescape")


def _first_line(text: str) -> list[str]:
    line = text.splitlines()[0] if text else ""
    return [field.strip().lower() for field in line.split("|")]


def _detect_format(path: Location, first: list[str], fmt: MetadataFormat) -> Literal["f5", "ljspeech"]:
    has_header = first == F5_HEADER
    if fmt == "f5" and not has_header:
        raise MetadataError(
            f"{path}: line 1 is {'|'.join(first)!r}, but format 'f5' needs the header 'audio_file|text'"
        )
    if fmt == "ljspeech" and has_header:
        raise MetadataError(f"{path}: line 1 is the F5 header 'audio_file|text', but format 'ljspeech' has no header")
    if fmt == "auto":
        return "f5" if has_header else "ljspeech"
    return fmt


@dataclass(frozen=True)
class _Record:
    line: int  # first physical line of the record
    fields: list[str]
    error: str | None = None  # the csv module's complaint when it could not split the record (fields
    # then holds only the text before the first delimiter, for the report)


def _records(text: str, dialect: dict) -> Iterator[_Record]:
    """One _Record per non-blank record; a csv error becomes a record carrying the error."""
    lines = io.StringIO(text, newline="").readlines()  # the physical lines csv counts
    reader = csv.reader(lines, **dialect)
    previous_end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            start, previous_end = previous_end + 1, reader.line_num
            span = f"line {start}" if start == previous_end else f"lines {start}-{previous_end}"
            first_field = lines[start - 1].split(dialect["delimiter"], 1)[0]
            yield _Record(start, [first_field], f"bad quoting, {span} skipped: {exc}")
            continue
        start, previous_end = previous_end + 1, reader.line_num
        if fields:
            yield _Record(start, fields)


def _parse_row(record: _Record, fmt: Literal["f5", "ljspeech"]) -> MetadataRow:
    if record.error:
        raise RowRejected(Reason.MALFORMED_ROW, record.error)
    fields = record.fields
    if any(_has_undecodable(field) for field in fields):
        raise RowRejected(Reason.MALFORMED_ROW, "the row is not valid UTF-8")
    if any("\n" in field or "\r" in field for field in fields):
        raise RowRejected(Reason.MALFORMED_ROW, "a field spans several lines (an unbalanced '\"' quote?)")
    if fmt == "f5":
        if len(fields) != 2:
            raise RowRejected(
                Reason.MALFORMED_ROW,
                f"expected 2 fields 'audio_file|text', got {len(fields)} (quote a text that contains '|')",
            )
        audio_file, text = fields[0].strip(), fields[1]
    else:
        if len(fields) not in (2, 3):
            raise RowRejected(
                Reason.MALFORMED_ROW, f"expected 'id|text|normalized_text' (2 or 3 fields), got {len(fields)}"
            )
        clip_id = fields[0].strip()
        audio_file = f"wavs/{clip_id}.wav" if clip_id else ""
        text = fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]
    if not audio_file:
        raise RowRejected(Reason.MALFORMED_ROW, "the audio file field is empty")
    return MetadataRow(record.line, audio_file, text)


def _has_undecodable(field: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in field)


def _readable(field: str) -> str:
    """A field with undecodable bytes, shown with U+FFFD so it can be written as UTF-8 JSON."""
    return field.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
