"""Training rows streamed from a dataset's mel shards (a folder or a URI), tokenised with a vocab, collated into
batches by a prefetch thread."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from flowtts.shards import HELDOUT_DIR, MANIFEST_FILE, TRAIN_DIR, VOCAB_FILE, decode_mel, split_files
from flowtts.storage import Location, resolve
from flowtts.text import TextFrontend, UnknownCharactersError, Vocab, pad_token_ids
from flowtts.training.batching import BatchPosition, EpochPlan
from flowtts.training.rows import RowGroupReader, RowReader, ShardIndex, read_column

MEL_PAD_VALUE = 0.0


@dataclass
class Batch:
    """One padded training batch; ``rows`` are dataset row indices (for fingerprints and logs)."""

    mel: torch.Tensor  # [b, n_max, n_mels] float32, zero-padded
    lens: torch.Tensor  # [b] frames per item
    text: torch.Tensor  # [b, nt_max] token ids padded with -1
    rows: list[int]

    @property
    def frames(self) -> int:
        return int(self.lens.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            mel=self.mel.to(device, non_blocking=True),
            lens=self.lens.to(device),
            text=self.text.to(device),
            rows=self.rows,
        )


@dataclass(frozen=True)
class Utterance:
    """One clip: its text and its mel ``[n_frames, n_mels]``."""

    text: str
    mel: torch.Tensor


def collate(mels: Sequence[torch.Tensor], token_ids: Sequence[Sequence[int]], rows: Sequence[int]) -> Batch:
    """Pad mels with 0 to ``[b, n_max, n_mels]`` and ids with -1 to ``[b, nt_max]``."""
    lens = torch.tensor([m.shape[0] for m in mels], dtype=torch.long)
    width = int(lens.max())
    mel = torch.stack([F.pad(m, (0, 0, 0, width - m.shape[0]), value=MEL_PAD_VALUE) for m in mels])
    return Batch(mel=mel, lens=lens, text=pad_token_ids(token_ids), rows=list(rows))


def dataset_vocab(dataset: str | Path | Location) -> Vocab:
    location = resolve(dataset).join(VOCAB_FILE)
    if not location.is_file():
        raise FileNotFoundError(
            f"{location} is missing: a dataset folder needs the {VOCAB_FILE} that preprocessing writes"
        )
    return Vocab.parse(location.read_text())


def manifest_fingerprint(dataset: str | Path | Location) -> str:
    """sha256 (16 hex digits) of ``manifest.json``, or of the shard names and sizes when there is none."""
    manifest = resolve(dataset).join(MANIFEST_FILE)
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    digest = hashlib.sha256()
    for file in split_files(resolve(dataset).join(TRAIN_DIR)):
        digest.update(f"{file.name}:{file.size()}".encode())
    return digest.hexdigest()[:16]


def dataset_text_frontend(dataset: str | Path | Location) -> TextFrontend | None:
    """The text front end preprocessing recorded in the manifest (``settings.text_frontend`` and
    ``settings.lowercase``); None for a dataset without a manifest."""
    manifest = resolve(dataset).join(MANIFEST_FILE)
    if not manifest.is_file():
        return None
    settings = json.loads(manifest.read_text()).get("settings", {})
    return TextFrontend(normalizer=settings.get("text_frontend", "plain"), lowercase=settings.get("lowercase", False))


def corpus_fingerprint(dataset: str | Path | Location) -> str | None:
    """The preprocessing input fingerprint recorded in the manifest (``inputs.fingerprint_sha256``)."""
    manifest = resolve(dataset).join(MANIFEST_FILE)
    if not manifest.is_file():
        return None
    inputs = json.loads(manifest.read_text()).get("inputs", {})
    return inputs.get("fingerprint_sha256") if isinstance(inputs, dict) else None


class TrainingData:
    """One split for training: its length index in memory, its rows read on demand through a ``RowReader``.

    Memory does not grow with the corpus beyond the index (16 bytes per row): texts and mels stay in
    the shards until a batch needs them, and are tokenised and decoded then.
    """

    def __init__(self, index: ShardIndex, reader: RowReader, vocab: Vocab):
        self.index, self.reader, self.vocab = index, reader, vocab
        self.lengths = index.lengths

    @classmethod
    def from_folder(
        cls, dataset: str | Path, vocab: Vocab, split: str = TRAIN_DIR, cache_groups: int = 4
    ) -> TrainingData:
        """A dataset folder or URI (``s3://bucket/dataset``) written by preprocessing."""
        index = ShardIndex.build(resolve(dataset).join(split))
        return cls(index, RowGroupReader(index, cache_groups), vocab)

    def __len__(self) -> int:
        return len(self.lengths)

    def speakers(self) -> list[str]:
        """The speaker of every row (reads that column alone)."""
        return read_column(self.index.files, "speaker")

    def text(self, row: int) -> str:
        return self.reader.read([row])[0].text

    def token_ids(self, row: int) -> list[int]:
        return _encode(self.vocab, self.text(row), row)

    def mel(self, row: int) -> torch.Tensor:
        found = self.reader.read([row])[0]
        return decode_mel(found.mel, found.n_frames)

    def batch(self, rows: Sequence[int]) -> Batch:
        found = self.reader.read(rows)
        return collate(
            [decode_mel(r.mel, r.n_frames) for r in found],
            [_encode(self.vocab, r.text, row) for r, row in zip(found, rows, strict=True)],
            rows,
        )


def _encode(vocab: Vocab, text: str, row: int) -> list[int]:
    try:
        return vocab.encode(text)
    except UnknownCharactersError as exc:
        raise UnknownCharactersError(f"row {row}: {text}", exc.missing) from exc


def missing_characters(texts: Sequence[str], vocab: Vocab) -> list[str]:
    """Characters of ``texts`` that ``vocab`` lacks, in order of first appearance."""
    return vocab.missing("".join(texts))


def dataset_texts(dataset: str | Path, split: str = TRAIN_DIR) -> list[str]:
    return read_column(split_files(resolve(dataset).join(split)), "text")


def sample_utterance(dataset: str | Path | Location) -> Utterance:
    """The fixed sentence for training samples: the first held-out row, else the last training row."""
    heldout = resolve(dataset).join(HELDOUT_DIR)
    split, pick_last = (heldout, False) if heldout.files(".parquet") else (resolve(dataset).join(TRAIN_DIR), True)
    index = ShardIndex.build(split)
    row = RowGroupReader(index, cache_groups=1).read([len(index) - 1 if pick_last else 0])[0]
    return Utterance(text=row.text, mel=decode_mel(row.mel, row.n_frames))


class BatchFeed:
    """Prefetch: a background thread reads the rows of the plan's next batches (through the data's reader)
    and collates them while the model trains; at most ``depth`` collated batches wait in the queue.

    ``next()`` returns the position of the batch (its place in the plan), the batch, and the seconds the
    caller waited for it; only consumed batches count as progress, whatever was prefetched.
    """

    def __init__(self, data: TrainingData, plan: EpochPlan, start: BatchPosition, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(data, plan, start), daemon=True, name="flowtts-batch-feed"
        )
        self._thread.start()

    def _fill(self, data: TrainingData, plan: EpochPlan, start: BatchPosition) -> None:
        try:
            for position, rows in plan.stream(start):
                if not self._offer((position, data.batch(rows))):
                    return
        except Exception as exc:  # handed to the consumer, which re-raises it
            self._offer((None, exc))

    def _offer(self, item: tuple) -> bool:
        """Put ``item`` once there is room; False when the feed was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[BatchPosition, Batch, float]:
        started = time.perf_counter()
        position, item = self._queue.get()
        waited = time.perf_counter() - started
        if position is None:
            raise RuntimeError("the batch feed thread failed") from item
        return position, item, waited

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
