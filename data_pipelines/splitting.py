"""The held-out split: clips reserved for evaluation and never trained on.

By fraction: within each speaker, clips are ranked by ``sha256(f"{seed}:{audio_file}")`` and the first
``round(fraction * n)`` are held out, clamped to ``[1, n - 1]`` for a speaker with ``n >= 2`` clips (so every
such speaker has clips on both sides; a speaker with one clip keeps it for training). The choice depends only
on the set of kept clips, their speakers and the seed, never on row order or worker scheduling.
By list: a text file with one ``audio_file`` per line (blank lines and ``#`` comments ignored).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from data_pipelines.reading import clip_key
from flowtts.storage import Location


@dataclass(frozen=True)
class HeldoutChoice:
    audio_files: frozenset[str]  # keys (clip_key) of the held-out clips
    unmatched: list[str]  # list entries that name no kept clip (rejected or absent), in list order


def heldout_by_fraction(speakers: Mapping[str, str], fraction: float, seed: int) -> HeldoutChoice:
    """``speakers``: {audio_file: speaker} of the kept clips."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for audio_file, speaker in speakers.items():
        by_speaker[speaker].append(audio_file)
    held: set[str] = set()
    for clips in by_speaker.values():
        ranked = sorted(clips, key=lambda audio_file: (_rank(audio_file, seed), audio_file))
        held.update(ranked[: _heldout_count(len(ranked), fraction)])
    return HeldoutChoice(frozenset(clip_key(a) for a in held), [])


def heldout_by_list(kept: Iterable[str], listed: Iterable[str]) -> HeldoutChoice:
    kept_keys = {clip_key(audio_file) for audio_file in kept}
    listed = list(listed)
    matched = frozenset(clip_key(a) for a in listed if clip_key(a) in kept_keys)
    return HeldoutChoice(matched, [a for a in listed if clip_key(a) not in kept_keys])


def read_holdout_list(path: Location) -> list[str]:
    lines = (line.strip() for line in path.read_bytes().decode("utf-8-sig").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _heldout_count(n: int, fraction: float) -> int:
    if fraction == 0 or n < 2:
        return 0
    return min(max(round(fraction * n), 1), n - 1)


def _rank(audio_file: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{clip_key(audio_file)}".encode()).hexdigest()
