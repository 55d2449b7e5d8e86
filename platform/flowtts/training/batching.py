"""Frame-budget batching, as upstream's ``DynamicBatchSampler``, plus the split across DDP ranks.

Upstream facts kept: indices sorted by length; a batch grows while ``sum_frames + len <= budget`` and
``count < max_samples``; an item longer than the budget on its own is dropped; the last, partial batch
is kept; the batch order is reshuffled every epoch with ``torch.Generator().manual_seed(seed + epoch)``.
Whole batches are dealt to ranks, and every rank gets the same number (DDP needs equal step counts):
the remainder of an epoch is dropped and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


class BatchingError(ValueError):
    """Batching settings or inputs that cannot produce a batch (the message names the value)."""


@dataclass(frozen=True)
class FrameBatches:
    """Batches of dataset indices in length order, and the items too long for any batch."""

    batches: list[list[int]]
    dropped: list[int]


def frame_budget_batches(lengths: Sequence[int], frame_budget: int, max_samples: int) -> FrameBatches:
    """Greedy length-sorted batches whose summed frames stay within ``frame_budget``."""
    if frame_budget <= 0:
        raise BatchingError(f"frame_budget must be positive, got {frame_budget}")
    if max_samples <= 0:
        raise BatchingError(f"max_samples must be positive, got {max_samples}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    dropped: list[int] = []
    batch: list[int] = []
    frames = 0
    for index in order:
        length = int(lengths[index])
        if frames + length <= frame_budget and len(batch) < max_samples:
            batch.append(index)
            frames += length
            continue
        if batch:
            batches.append(batch)
        if length <= frame_budget:
            batch, frames = [index], length
        else:
            dropped.append(index)
            batch, frames = [], 0
    if batch:
        batches.append(batch)
    if dropped:
        logger.warning(
            "dropped %d items longer than the frame budget %d (indices %s)", len(dropped), frame_budget, dropped[:10]
        )
    return FrameBatches(batches=batches, dropped=dropped)


def shuffle_batches(batches: Sequence[list[int]], seed: int, epoch: int) -> list[list[int]]:
    """This epoch's batch order: a permutation drawn from a generator seeded with ``seed + epoch``."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def shard_batches(batches: Sequence[list[int]], rank: int, world: int) -> list[list[int]]:
    """Rank ``rank``'s share: batches ``rank, rank + world, ...``; every rank gets ``len // world``."""
    if world <= 0 or not 0 <= rank < world:
        raise BatchingError(f"rank {rank} is not in 0..{world - 1} (world size {world})")
    per_rank = len(batches) // world
    if per_rank == 0:
        raise BatchingError(
            f"{len(batches)} batches cannot feed {world} ranks; lower the frame budget or use fewer workers"
        )
    return list(batches[rank : per_rank * world : world])


def padding_waste(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Padded frames / all frames of the padded batches (``sum(count * longest)``)."""
    padded = real = 0
    for batch in batches:
        sizes = [int(lengths[i]) for i in batch]
        padded += len(sizes) * max(sizes)
        real += sum(sizes)
    return (padded - real) / padded if padded else 0.0


@dataclass(frozen=True)
class BatchPosition:
    """Where a rank is in its stream of batches: the next batch is ``index`` of epoch ``epoch``."""

    epoch: int = 0
    index: int = 0


class EpochPlan:
    """The deterministic batch stream of one rank: epochs of shuffled, sharded frame-budget batches."""

    def __init__(
        self, lengths: Sequence[int], frame_budget: int, max_samples: int, *, seed: int, rank: int = 0, world: int = 1
    ):
        self.lengths = [int(n) for n in lengths]
        self.base = frame_budget_batches(self.lengths, frame_budget, max_samples)
        self.seed, self.rank, self.world = seed, rank, world
        if not self.base.batches:
            raise BatchingError(f"no batch fits: all {len(self.lengths)} items exceed the frame budget {frame_budget}")
        self.batches_per_epoch = len(shard_batches(self.base.batches, 0, world))
        self.remainder_per_epoch = len(self.base.batches) - self.batches_per_epoch * world
        if self.remainder_per_epoch and rank == 0:
            logger.info(
                "each epoch drops %d of %d batches so that %d ranks get %d each",
                self.remainder_per_epoch,
                len(self.base.batches),
                world,
                self.batches_per_epoch,
            )
        self._cached: tuple[int, int, list[list[int]]] | None = None

    def rank_batches(self, epoch: int, rank: int | None = None) -> list[list[int]]:
        rank = self.rank if rank is None else rank
        cached = self._cached  # one read: the prefetch thread may replace it concurrently
        if cached is None or cached[:2] != (epoch, rank):
            ordered = shuffle_batches(self.base.batches, self.seed, epoch)
            cached = (epoch, rank, shard_batches(ordered, rank, self.world))
            self._cached = cached
        return cached[2]

    def batch_at(self, position: BatchPosition, rank: int | None = None) -> list[int]:
        return self.rank_batches(position.epoch, rank)[position.index]

    def advance(self, position: BatchPosition) -> BatchPosition:
        if position.index + 1 < self.batches_per_epoch:
            return BatchPosition(position.epoch, position.index + 1)
        return BatchPosition(position.epoch + 1, 0)

    def stream(self, start: BatchPosition):
        """Yield ``(position, indices)`` forever from ``start``."""
        position = start
        while True:
            batches = self.rank_batches(position.epoch)
            for index in range(position.index, len(batches)):
                yield BatchPosition(position.epoch, index), batches[index]
            position = BatchPosition(position.epoch + 1, 0)

    def padding_waste(self) -> float:
        return padding_waste(self.base.batches, self.lengths)
