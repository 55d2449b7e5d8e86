"""Stored voices: reference audio + transcript + optional name, on any pyarrow filesystem.

Layout under the store's root (a local folder, or any URI ``flowtts.storage`` opens: ``s3://bucket/prefix``,
``gs://...``, ``hdfs://...``)::

    <root>/<voice_id>/audio.wav    24 kHz mono float32 WAV (decoded and resampled at upload)
    <root>/<voice_id>/voice.json   metadata (id, name, transcript, duration, sha256 of audio.wav, time)

    <root>/names/<sha256 of name>/<voice_id>   a claim: the name index

``voice.json`` is written last, so a voice exists exactly when its metadata does. Ids are generated
here (``voice_`` + 24 hex digits) and validated before they touch a path, so no request can name a
file. Serving and batch synthesis read the same store.

Names: a lookup by name lists one small folder (the name's claims), never the store. Uniqueness holds
across replicas, processes and machines on any store with read-after-write consistency (local files,
S3 since 2020, GCS), without locks or conditional writes: a creator writes its claim, THEN lists the
name's claims, and goes on only if its claim is the only live one. Of two racing creators at least the
second to list sees both, so at most one wins (both may lose; each then gets 409 and may retry). A
claim whose voice never got its metadata (its creator died) stops counting after ``CLAIM_TTL_S``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import soundfile as sf

from flowtts.storage import resolve

VOICE_ID_PATTERN = re.compile(r"^voice_[0-9a-f]{24}$")
AUDIO_FILE, METADATA_FILE, NAMES_DIR = "audio.wav", "voice.json", "names"
CLAIM_TTL_S = 120.0


class VoiceNotFoundError(LookupError):
    """No stored voice has this id or name."""


class VoiceNameTakenError(ValueError):
    """Another stored voice already has this name."""


@dataclass(frozen=True)
class Voice:
    id: str
    name: str | None
    transcript: str
    duration_s: float
    sample_rate: int
    created_at: float
    audio_sha256: str


def is_voice_id(text: str) -> bool:
    return bool(VOICE_ID_PATTERN.match(text))


class VoiceStore:
    """CRUD for voices on a pyarrow filesystem; safe to use from several replicas at once."""

    def __init__(self, uri: str | Path):
        """``uri``: a local folder (made absolute, so every process opens the same place) or a URI."""
        location = resolve(uri)
        self.uri, self.fs, self.root = location.uri, location.fs, location.path.rstrip("/")
        self.fs.create_dir(self.root, recursive=True)

    def create(self, audio: np.ndarray, sample_rate: int, transcript: str, name: str | None = None) -> Voice:
        """Store float32 mono ``audio`` with its transcript; returns the new voice (with its id)."""
        wav = io.BytesIO()
        sf.write(wav, np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, format="WAV", subtype="FLOAT")
        data = wav.getvalue()
        voice = Voice(
            id="voice_" + secrets.token_hex(12),
            name=name,
            transcript=transcript,
            duration_s=round(len(audio) / sample_rate, 3),
            sample_rate=sample_rate,
            created_at=time.time(),  # full resolution: voices saved within one millisecond keep their order
            audio_sha256=hashlib.sha256(data).hexdigest(),
        )
        folder = f"{self.root}/{voice.id}"
        if name is not None:
            self._claim(name, voice.id)
        self.fs.create_dir(folder, recursive=True)
        self._write(f"{folder}/{AUDIO_FILE}", data)
        self._write(f"{folder}/{METADATA_FILE}", json.dumps(asdict(voice), ensure_ascii=False).encode("utf-8"))
        return voice

    def _names_dir(self, name: str) -> str:
        return f"{self.root}/{NAMES_DIR}/{hashlib.sha256(name.encode('utf-8')).hexdigest()}"

    def _claims(self, name: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self._names_dir(name), allow_not_found=True, recursive=False)
        return [c for c in self.fs.get_file_info(selector) if is_voice_id(c.base_name)]

    def _claim(self, name: str, voice_id: str) -> None:
        """Write this voice's claim on ``name``; keep it only if no other live claim is there."""
        folder = self._names_dir(name)
        self.fs.create_dir(folder, recursive=True)
        self._write(f"{folder}/{voice_id}", b"")
        others = [c for c in self._claims(name) if c.base_name != voice_id and self._live(c)]
        if others:
            self.fs.delete_file(f"{folder}/{voice_id}")
            raise VoiceNameTakenError(f"a voice named {name!r} already exists; delete it or choose another name")

    def _live(self, claim: pafs.FileInfo) -> bool:
        """A claim counts while its voice exists or may still be being written."""
        if self.fs.get_file_info(f"{self.root}/{claim.base_name}/{METADATA_FILE}").type == pafs.FileType.File:
            return True
        return claim.mtime is None or time.time() - claim.mtime.timestamp() < CLAIM_TTL_S

    def get(self, voice_id: str) -> Voice:
        if not is_voice_id(voice_id):
            raise VoiceNotFoundError(f"voice {voice_id!r} not found (ids look like voice_<24 hex digits>)")
        try:
            raw = self._read(f"{self.root}/{voice_id}/{METADATA_FILE}")
        except FileNotFoundError as exc:
            raise VoiceNotFoundError(f"voice {voice_id!r} not found") from exc
        return Voice(**json.loads(raw))

    def lookup(self, id_or_name: str) -> Voice:
        """A voice by id, else by name."""
        if is_voice_id(id_or_name):
            return self.get(id_or_name)
        voice = self.find_by_name(id_or_name)
        if voice is None:
            raise VoiceNotFoundError(f"no voice with id or name {id_or_name!r}")
        return voice

    def find_by_name(self, name: str) -> Voice | None:
        """The voice holding ``name``: one small listing of the name's claims."""
        for claim in self._claims(name):
            try:
                return self.get(claim.base_name)
            except VoiceNotFoundError:
                continue  # being written, or its creator lost the race
        return None

    def list(self) -> list[Voice]:
        """All voices, oldest first."""
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        voices = []
        for entry in self.fs.get_file_info(selector):
            name = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if entry.type == pafs.FileType.Directory and is_voice_id(name):
                try:
                    voices.append(self.get(name))
                except VoiceNotFoundError:
                    continue  # being written or deleted by another replica
        return sorted(voices, key=lambda v: (v.created_at, v.id))

    def read_audio(self, voice: Voice) -> bytes:
        return self._read(f"{self.root}/{voice.id}/{AUDIO_FILE}")

    def delete(self, voice_id: str) -> None:
        voice = self.get(voice_id)  # raises VoiceNotFoundError
        folder = f"{self.root}/{voice_id}"
        self.fs.delete_file(f"{folder}/{METADATA_FILE}")  # the voice disappears atomically here
        if voice.name is not None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{self._names_dir(voice.name)}/{voice_id}")  # the name is free again
        self.fs.delete_dir(folder)

    def _write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def _read(self, path: str) -> bytes:
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(path)
        with self.fs.open_input_stream(path) as stream:
            return stream.read()
