"""Test helper: a small mel-shard dataset folder written directly (no preprocessing job needed).

Layout as ``flowtts.shards`` describes: ``shards/*.parquet`` (rows sorted by length), optionally
``heldout/*.parquet``, ``vocab.txt`` and ``manifest.json``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flowtts.audio import load_audio, log_mel_spectrogram
from flowtts.shards import HELDOUT_DIR, MANIFEST_FILE, SHARD_SCHEMA, TRAIN_DIR, VOCAB_FILE, encode_mel
from flowtts.text import Vocab, normalize_text


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="|", quoting=csv.QUOTE_NONE))


def corpus_rows(corpus: Path, count: int) -> list[dict]:
    """The first ``count`` clips of a CSV + wavs corpus as shard rows (mel computed here); speakers from
    ``speakers.csv`` when the corpus has one, else all ``spk``."""
    entries = read_rows(corpus / "metadata.csv")[:count]
    speakers = (
        {row["audio_file"]: row["speaker"] for row in read_rows(corpus / "speakers.csv")}
        if (corpus / "speakers.csv").is_file()
        else {}
    )
    rows = []
    for entry in entries:
        wav = load_audio(corpus / entry["audio_file"])
        mel = log_mel_spectrogram(wav)[0].T  # [frames, 100]
        rows.append(
            {
                "audio_file": entry["audio_file"],
                "text": normalize_text(entry["text"]),
                "speaker": speakers.get(entry["audio_file"], "spk"),
                "duration": wav.shape[0] / 24000,
                "n_frames": mel.shape[0],
                "mel": encode_mel(mel),
            }
        )
    return rows


def write_split(folder: Path, rows: list[dict], shards: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        part = sorted(rows[i::shards], key=lambda r: r["n_frames"])
        if part:
            table = pa.Table.from_pylist(part, schema=SHARD_SCHEMA)
            pq.write_table(table, folder / f"part-{i:03d}.parquet")


def write_dataset(out: Path, corpus: Path, count: int, heldout: int = 0) -> Path:
    """Write ``count`` training rows (+ ``heldout`` rows after them) with a vocab covering all texts."""
    rows = corpus_rows(corpus, count + heldout)
    write_split(out / TRAIN_DIR, rows[:count])
    if heldout:
        write_split(out / HELDOUT_DIR, rows[count:], shards=1)
    Vocab.from_texts(r["text"] for r in rows).save(out / VOCAB_FILE)
    fingerprint = hashlib.sha256("".join(r["audio_file"] for r in rows).encode()).hexdigest()[:16]
    manifest = {"inputs": {"fingerprint_sha256": fingerprint}, "counts": {"train": count, "heldout": heldout}}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def copy_dataset(source: Path, target: str) -> str:
    """Copy a dataset folder, file by file, to a folder or URI (``s3://bucket/ds``); returns ``target``."""
    from flowtts.storage import resolve

    local = resolve(source)
    for file in local.files(recursive=True):
        file.copy_file_to(resolve(target).join(file.path[len(local.path) + 1 :]))
    return target
