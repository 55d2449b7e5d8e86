"""Reference voices as the ingress hands them to the model: a stored voice, an inline upload, and the
stored voices that the ``[name]`` tags of a text switch to (``flowtts.synthesis.multivoice``).

Every reference is a ``ReferenceSpec`` keyed by a content hash, so the model replica's LRU never serves
a stale voice. Unknown tag names are found here, before any model work: 404 naming them.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np

from flowtts.synthesis import EmptyTextError, split_voice_tags
from serve.http_errors import ApiError
from serve.messages import ReferenceSpec
from serve.settings import LimitSettings
from serve.voices import Voice, VoiceNotFoundError, VoiceStore


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
