"""How rows of many requests (a Serve batch, a Ray Data batch) become ``Synthesizer.generate`` calls.

A batch holds several requests (or input rows), each with one or more items (text chunks). Items are
grouped by their sampling settings (one ``sample()`` call has one NFE, CFG strength, sway coefficient and time grid),
then packed into calls whose padded size, ``items x longest item`` in mel frames, stays within
``max_batch_frames``: one long request is split over several calls instead of exhausting memory, and
an item longer than the cap still runs, alone. Nothing is ever dropped. Items are sorted by length
before packing so that similar lengths share a call (less padding); an item's result does not depend
on its neighbours because noise is seeded per item and padding is masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowtts.synthesis.sampling import SamplingSettings

DEFAULT_MAX_BATCH_FRAMES = 32768
"""items x padded mel frames per call (32768 frames: 5.8 min at hop 256, 24 kHz), serving's default too."""


@dataclass(frozen=True)
class GenerateWork:
    """One request's share of a batch: its items (``SampleItem``s) and how to sample them."""

    items: tuple[Any, ...]
    sampling: SamplingSettings


@dataclass
class GenerateCall:
    """One ``generate`` call: ``slots[i] = (work index, item index)`` of ``items[i]``."""

    sampling: SamplingSettings
    slots: list[tuple[int, int]] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    longest: int = 0

    def cost_with(self, frames: int) -> int:
        return (len(self.items) + 1) * max(self.longest, frames)

    def add(self, slot: tuple[int, int], item: Any) -> None:
        self.slots.append(slot)
        self.items.append(item)
        self.longest = max(self.longest, int(item.total_frames))

    @property
    def padded_frames(self) -> int:
        return len(self.items) * self.longest

    @property
    def request_count(self) -> int:
        return len({work for work, _ in self.slots})


def plan_generate_calls(works: list[GenerateWork], max_batch_frames: int) -> list[GenerateCall]:
    """Group by sampling settings (first-seen order), sort by length (longest first), pack greedily."""
    if max_batch_frames < 1:
        raise ValueError(f"max_batch_frames must be >= 1, got {max_batch_frames}")
    groups: dict[SamplingSettings, list[tuple[tuple[int, int], Any]]] = {}
    for w, work in enumerate(works):
        for i, item in enumerate(work.items):
            groups.setdefault(work.sampling, []).append(((w, i), item))
    calls = []
    for sampling, entries in groups.items():
        entries.sort(key=lambda entry: -int(entry[1].total_frames))
        call = GenerateCall(sampling)
        for slot, item in entries:
            if call.items and call.cost_with(int(item.total_frames)) > max_batch_frames:
                calls.append(call)
                call = GenerateCall(sampling)
            call.add(slot, item)
        calls.append(call)
    return calls
