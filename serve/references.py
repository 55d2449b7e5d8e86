"""Reference voices as the ingress hands them to the model: a stored voice, an inline upload, and the
stored voices that the ``[name]`` tags of a text switch to (``flowtts.synthesis.multivoice``).

Every reference is a ``ReferenceSpec`` keyed by a content hash, so the model replica's LRU never serves
a stale voice. Unknown tag names are found here, before any model work: 404 naming them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

from flowtts.synthesis import EmptyTextError, split_voice_tags
from flowtts.voices import Voice, VoiceNotFoundError, VoiceStore
from serve.http_errors import ApiError
from serve.messages import ReferenceSpec
from serve.settings import LimitSettings

T = TypeVar("T")


def stored_reference(voice: Voice) -> ReferenceSpec:
    return ReferenceSpec(key=f"{voice.id}:{voice.audio_sha256}", text=voice.transcript, voice_id=voice.id)


def inline_reference(data: bytes, audio: np.ndarray, ref_text: str) -> ReferenceSpec:
    """``data``: the uploaded file as sent; ``audio``: it decoded to float32 mono at the model's rate."""
    key = hashlib.sha256(data + b"\0" + ref_text.encode("utf-8")).hexdigest()
    return ReferenceSpec(key=f"inline:{key}", text=ref_text, audio=audio)


async def lookup_voice(store: VoiceStore, id_or_name: str, where: str | None = None, field: str | None = None) -> Voice:
    """The stored voice, or a 404 naming it (and ``where`` it was asked for), about the request ``field``."""
    try:
        return await asyncio.to_thread(store.lookup, id_or_name)
    except VoiceNotFoundError as exc:
        raise ApiError(404, "voice_not_found", f"{where}: {exc}" if where else str(exc), field=field) from exc


async def tag_references(store: VoiceStore, text: str, limits: LimitSettings) -> tuple[tuple[str, ReferenceSpec], ...]:
    """The stored voice of every ``[name]`` tag in ``text`` (404 for an unknown one, 422 for a tag's speed
    outside ``limits.speed_range`` or a text with nothing outside its tags), errors about the ``text`` field."""
    try:
        segments = split_voice_tags(text)
    except EmptyTextError as exc:
        raise ApiError(422, "empty_text", str(exc), field="text") from exc
    low, high = limits.speed_range
    for segment in segments:
        if segment.speed is not None and not low <= segment.speed <= high:
            raise ApiError(
                422,
                "invalid_option",
                f"voice tag [{segment.voice} speed={segment.speed:g}]: speed is outside the allowed range "
                f"[{low}, {high}]",
                field="text",
            )
    names = dict.fromkeys(s.voice for s in segments if s.voice is not None)
    return tuple(
        [(name, stored_reference(await lookup_voice(store, name, f"voice tag [{name}]", "text"))) for name in names]
    )


class LRUCache(Generic[T]):
    """A small least-recently-used map (per replica: prepared references keyed by content hash)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, T] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> T | None:
        if key not in self._items:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
