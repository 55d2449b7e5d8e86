"""The mel-shard format shared by preprocessing (writer) and training/evaluation (readers).

A dataset folder holds ``shards/*.parquet`` (training rows), optionally ``heldout/*.parquet`` (rows
reserved for evaluation, never trained on), ``vocab.txt``, ``manifest.json`` and ``rejected.jsonl``.
Each row is one clip; the mel is stored time-major ``[n_frames, n_mels]`` as little-endian float16
bytes (natural-log magnitudes lie in about [-11.6, 5], where float16's relative error of 5e-4 is far
below what the model can resolve). Rows are sorted by ``n_frames`` so batching by length is cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from flowtts.storage import Location, resolve

N_MELS = 100
SHARD_SCHEMA = pa.schema(
    [
        ("audio_file", pa.string()),  # as written in the metadata file
        ("text", pa.string()),  # normalised text
        ("speaker", pa.string()),
        ("duration", pa.float64()),  # seconds at 24 kHz
        ("n_frames", pa.int32()),
        ("mel", pa.large_binary()),  # float16 [n_frames, n_mels], C order
    ]
)
TRAIN_DIR, HELDOUT_DIR = "shards", "heldout"
MANIFEST_FILE, VOCAB_FILE, REJECTED_FILE = "manifest.json", "vocab.txt", "rejected.jsonl"


def encode_mel(mel: torch.Tensor | np.ndarray) -> bytes:
    """``[n_frames, n_mels]`` float mel -> float16 bytes."""
    array = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
    if array.ndim != 2 or array.shape[1] != N_MELS:
        raise ValueError(f"mel must be [n_frames, {N_MELS}], got {array.shape}")
    return np.ascontiguousarray(array, dtype="<f2").tobytes()


def decode_mel(blob: bytes, n_frames: int) -> torch.Tensor:
    """float16 bytes -> float32 ``[n_frames, n_mels]``."""
    array = np.frombuffer(blob, dtype="<f2")
    if array.size != n_frames * N_MELS:
        raise ValueError(f"mel blob holds {array.size} values, expected {n_frames} x {N_MELS}")
    return torch.from_numpy(array.astype(np.float32).reshape(n_frames, N_MELS))


def shard_files(dataset: str | Path | Location, split: str = TRAIN_DIR) -> list[Location]:
    """The split's Parquet files (a local folder or a URI, see ``flowtts.storage``), sorted by name."""
    return split_files(resolve(dataset).join(split))


def split_files(folder: Location) -> list[Location]:
    """The Parquet files of one split folder, sorted by name; an empty or absent folder is an error."""
    files = folder.files(".parquet")
    if not files:
        raise FileNotFoundError(f"no parquet shards in {folder}")
    return files


def read_table(dataset: str | Path | Location, split: str = TRAIN_DIR, columns: list[str] | None = None) -> pa.Table:
    """All rows of a split, in shard order (sorted by length)."""
    return pa.concat_tables([_read_shard(f, columns) for f in shard_files(dataset, split)])


def _read_shard(shard: Location, columns: list[str] | None) -> pa.Table:
    with shard.open_input() as f:
        return pq.read_table(f, columns=columns)
