"""Streaming rows of a split: the global length index every rank holds, and the reader that fetches rows.

Why per-rank Parquet row-group reads, not Ray Data streaming into Ray Train (``get_dataset_shard``):
the frame-budget batches are planned over the global length index (the same plan on every rank), each
rank trains on batches ``rank, rank + world, ...`` of the epoch's shuffled order, and a restart resumes
at the saved (epoch, batch) position with the same next batch. Ray Data's streaming split hands blocks
to whichever rank asks first: which rows a rank gets is neither deterministic nor resumable mid-epoch,
and a batch cannot be planned across blocks by frame budget. Here a rank knows which rows it needs next
and reads only the row groups that hold them.

Memory: the index costs 16 bytes per row (``n_frames``, shard, row group, row in the group; 700 k rows
for 1000 h = 11 MB); the reader keeps at most ``cache_groups`` decoded row groups (an LRU). Shards are
sorted by length, so the rows of one batch are neighbours and lie in one or two row groups.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowtts.shards import split_files
from flowtts.storage import Location

ROW_COLUMNS = ["text", "n_frames", "mel"]


@dataclass(frozen=True)
class ShardRow:
    """What training needs of one row: the text and the float16 mel bytes of ``n_frames`` frames."""

    text: str
    n_frames: int
    mel: bytes


def read_column(files: Sequence[Location], name: str) -> list:
    """One column of every row of ``files``, in order (reads that column's pages only)."""
    values: list = []
    for file in files:
        with file.open_input() as f:
            values.extend(pq.ParquetFile(f).read(columns=[name]).column(0).to_pylist())
    return values


@dataclass(frozen=True)
class ShardIndex:
    """Where every row of a split lies, and its length; row ``i`` is the ``i``-th row in shard order."""

    files: list[Location]
    lengths: np.ndarray  # [rows] int32 n_frames
    shard: np.ndarray  # [rows] int32 index into files
    group: np.ndarray  # [rows] int32 row group in that file
    offset: np.ndarray  # [rows] int32 row inside that row group

    @classmethod
    def build(cls, split: Location) -> ShardIndex:
        """From the Parquet footers and the ``n_frames`` column alone."""
        files = split_files(split)
        lengths, shard, group, offset = [], [], [], []
        for number, file in enumerate(files):
            with file.open_input() as f:
                parquet = pq.ParquetFile(f)
                lengths.append(parquet.read(columns=["n_frames"]).column(0).to_numpy())
                for g in range(parquet.num_row_groups):
                    rows = parquet.metadata.row_group(g).num_rows
                    shard.append(np.full(rows, number, dtype=np.int32))
                    group.append(np.full(rows, g, dtype=np.int32))
                    offset.append(np.arange(rows, dtype=np.int32))
        return cls(
            files=files,
            lengths=np.concatenate(lengths).astype(np.int32),
            shard=np.concatenate(shard),
            group=np.concatenate(group),
            offset=np.concatenate(offset),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def group_of(self, row: int) -> tuple[int, int]:
        return int(self.shard[row]), int(self.group[row])


class RowReader(Protocol):
    """The one interface training data reads rows through (row groups today; Ray Data could sit here)."""

    def read(self, rows: Sequence[int]) -> list[ShardRow]: ...


class RowGroupReader:
    """Reads rows by decoding their Parquet row groups, keeping the last ``cache_groups`` of them (LRU).

    Thread-safe: the batch feed's prefetch thread and the training thread may read at the same time.
    ``loads`` counts how often each (shard, row group) was read from storage.
    """

    def __init__(self, index: ShardIndex, cache_groups: int = 4):
        if cache_groups <= 0:
            raise ValueError(f"cache_groups must be positive, got {cache_groups}")
        self.index, self.cache_groups = index, cache_groups
        self.loads: Counter[tuple[int, int]] = Counter()
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, rows: Sequence[int]) -> list[ShardRow]:
        found = []
        with self._lock:
            for row in rows:
                table = self._group(self.index.group_of(row))
                at = int(self.index.offset[row])
                found.append(
                    ShardRow(
                        text=table["text"][at].as_py(),
                        n_frames=table["n_frames"][at].as_py(),
                        mel=table["mel"][at].as_py(),
                    )
                )
        return found

    def _group(self, key: tuple[int, int]) -> pa.Table:
        table = self._cache.get(key)
        if table is not None:
            self._cache.move_to_end(key)
            return table
        shard, group = key
        with self.index.files[shard].open_input() as f:
            table = pq.ParquetFile(f).read_row_group(group, columns=ROW_COLUMNS)
        self.loads[key] += 1
        self._cache[key] = table
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return table
