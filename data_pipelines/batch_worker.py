"""The batch-synthesis actor: a Ray Data batch of input rows in, one result per row out.

Each actor loads the model once (on the first row that needs it) and keeps recent references prepared.
For a batch it checks every row, plans the good ones as serving does (``Synthesizer.plan_voices``), packs
all their sampler rows (with best of N, every candidate of every chunk) into as few ``generate`` calls as
the frame budget allows (``flowtts.synthesis.batching``: the planner serving uses), renders each row (its
best candidates: ``Synthesizer.render_best``), and writes
``audio/<id>.<format>`` and then the row's record ``_state/done/<id>.json``, each atomically. A row whose
record exists was written by an earlier attempt: its record is returned and nothing is synthesised.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from flowtts.audio import AudioError
from flowtts.model_source import ModelSource
from flowtts.storage import Location, StorageError, resolve
from flowtts.synthesis import (
    EmptyTextError,
    InvalidOptionsError,
    ReferenceAudioError,
    SamplingSettings,
    SynthesisOptions,
    Synthesizer,
    TranscriptRequiredError,
    UnknownVoiceError,
    UnspeakableTextError,
    encode_audio,
    voice_names,
)
from flowtts.synthesis.batching import GenerateWork, plan_generate_calls
from flowtts.synthesis.candidates import candidate_items
from flowtts.synthesis.cli import candidate_judges
from flowtts.text import UnknownCharactersError
from flowtts.usage_reporting import usage_reporting_off
from flowtts.voices import VoiceNotFoundError, VoiceStore

logger = logging.getLogger(__name__)

AUDIO_DIR = "audio"
STATE_DIR = "_state"
DONE_DIR = f"{STATE_DIR}/done"
PARTIAL_DIR = f"{STATE_DIR}/partial"  # files being written (not on object stores): gone with _state at the end
REFERENCE_CACHE = 64
RESULT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("status", pa.string()),  # written | rejected
        ("reason", pa.string()),
        ("message", pa.string()),
        ("path", pa.string()),
        ("duration_s", pa.float64()),
        ("seed", pa.int64()),
        ("nfe", pa.int64()),
        ("voice", pa.string()),
        ("text", pa.string()),
        ("candidates", pa.int64()),
        ("chosen_seeds", pa.list_(pa.int64())),  # best of N: the seed kept for each chunk (empty for N = 1)
        ("synthesized", pa.bool_()),  # by this run (False: written by an earlier one)
    ]
)
# exception -> rejection reason, first match wins (TranscriptRequiredError is an EmptyTextError)
ROW_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (TranscriptRequiredError, "missing_transcript"),
    (EmptyTextError, "empty_text"),
    (UnspeakableTextError, "empty_text"),
    (UnknownCharactersError, "unknown_characters"),
    (VoiceNotFoundError, "unknown_voice"),
    (UnknownVoiceError, "unknown_voice"),
    (ReferenceAudioError, "unreadable_reference"),
    (AudioError, "unreadable_reference"),
    (StorageError, "unreadable_reference"),
    (InvalidOptionsError, "invalid_option"),
)


class RefusedRow(Exception):
    """A row the job refuses (its ``reason`` goes to rejected.jsonl with the message); never leaves the actor."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class BatchJob:
    """What every actor needs: where things are, how to load the model and how to sample."""

    source: ModelSource  # pinned
    load_options: dict[str, Any]  # Synthesizer.from_pretrained keywords besides the source
    input_dir: str  # the input file's folder: relative ref_audio paths start here
    out: str
    voices: str | None
    format: str
    sampling: SamplingSettings
    seed: int
    target_rms: float
    max_text_chars: int
    max_batch_frames: int
    candidates: int = 1
    judges: dict[str, Any] | None = None  # flowtts.synthesis.cli.judge_options: the judges of candidates > 1
    duplicates: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Planned:
    index: int
    row: dict
    plan: Any  # VoicedPlan
    options: SynthesisOptions
    voice: str


class RowSynthesizer:
    """Ray Data ``map_batches`` class: one model per actor."""

    def __init__(self, job: BatchJob):
        usage_reporting_off()
        self.job = job
        self.out = resolve(job.out)
        self.store = VoiceStore(job.voices) if job.voices else None
        self._synth: Synthesizer | None = None
        self._reference = functools.lru_cache(maxsize=REFERENCE_CACHE)(self._prepare_reference)

    @property
    def synth(self) -> Synthesizer:
        if self._synth is None:
            synth = Synthesizer.from_pretrained(self.job.source, **self.job.load_options)
            synth.judges = candidate_judges(self.job.judges, synth.transcriber)
            self._synth = synth
        return self._synth

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results: list[dict | None] = [None] * len(rows)
        planned: list[_Planned] = []
        for index, row in enumerate(rows):
            try:
                done = self._done(row)
            except RefusedRow as exc:
                results[index] = rejection(row, exc.reason, str(exc))
                continue
            if done is not None:
                results[index] = done
                continue
            self.synth  # noqa: B018 - the model loads here, outside the row's error handling
            try:
                planned.append(self._plan(index, row))
            except RefusedRow as exc:
                results[index] = rejection(row, exc.reason, str(exc))
            except Exception as exc:
                reason = next((r for cls, r in ROW_ERRORS if isinstance(exc, cls)), None)
                if reason is None:
                    raise  # not the row's fault: the task fails and Ray Data retries it
                results[index] = rejection(row, reason, str(exc))
        for entry, mels in zip(planned, self._generate(planned), strict=True):
            results[entry.index] = self._write(entry, mels)
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    # ------------------------------------------------------------ per row

    def _done(self, row: dict) -> dict | None:
        if row["reason"]:
            raise RefusedRow(row["reason"], row["message"])
        if row["id"] in self.job.duplicates:
            raise RefusedRow("duplicate_id", f"the id {row['id']!r} is on more than one row of the input")
        record = self.out.join(DONE_DIR, f"{row['id']}.json")
        if not record.exists():
            return None
        return {**json.loads(record.read_text()), "synthesized": False}

    def _plan(self, index: int, row: dict) -> _Planned:
        text = row["text"]
        if not text.strip():
            raise RefusedRow("empty_text", "the text is empty")
        if len(text) > self.job.max_text_chars:
            raise RefusedRow(
                "text_too_long", f"the text has {len(text)} characters; the limit is {self.job.max_text_chars}"
            )
        options = self._options(row)
        reference, voice = self._row_reference(row)
        voices = {name: self._stored(name) for name in voice_names(text)}
        plan = self.synth.plan_voices(text, reference, options, voices)
        return _Planned(index=index, row=row, plan=plan, options=options, voice=voice)

    def _options(self, row: dict) -> SynthesisOptions:
        seed = _number(row, "seed", int, self.job.seed)
        nfe = _number(row, "nfe", int, self.job.sampling.nfe)
        if nfe < 1:
            raise InvalidOptionsError(f"nfe={nfe} is not allowed; use >= 1")
        sampling = replace(self.job.sampling, nfe=nfe)
        speed = _number(row, "speed", float, 1.0)
        return SynthesisOptions(sampling=sampling, speed=speed, seed=seed, candidates=self.job.candidates)

    def _row_reference(self, row: dict):
        if row["voice"] and row["ref_audio"]:
            raise RefusedRow("invalid_option", "give either voice or ref_audio, not both")
        if row["voice"]:
            return self._stored(row["voice"]), row["voice"]
        if row["ref_audio"]:
            return self._reference("file", row["ref_audio"], row["ref_text"]), row["ref_audio"]
        raise RefusedRow("missing_voice", "the row names no voice: give voice, or ref_audio and ref_text")

    def _stored(self, name: str):
        if self.store is None:
            raise RefusedRow("unknown_voice", f"voice {name!r}: no voice store is configured (--voices)")
        return self._reference("store", name, "")

    def _prepare_reference(self, kind: str, key: str, text: str):
        if kind == "store":
            voice = self.store.lookup(key)
            return self.synth.prepare_reference(
                self.store.read_audio(voice), voice.transcript, target_rms=self.job.target_rms
            )
        try:
            data = self._reference_location(key).read_bytes()
        except StorageError as exc:
            raise RefusedRow("unreadable_reference", f"reference audio {key!r}: {exc}") from exc
        return self.synth.prepare_reference(data, text, target_rms=self.job.target_rms)

    def _reference_location(self, path: str) -> Location:
        if "://" in path or path.startswith("/"):
            return resolve(path)
        return resolve(self.job.input_dir).join(*path.split("/"))

    # ------------------------------------------------------------ sampling and output

    def _generate(self, planned: list[_Planned]) -> list[list]:
        works = [
            GenerateWork(tuple(candidate_items(entry.plan.items, entry.options.candidates)), entry.options.sampling)
            for entry in planned
        ]
        mels: list[list] = [[None] * len(work.items) for work in works]
        for call in plan_generate_calls(works, self.job.max_batch_frames):
            for (work, item), mel in zip(call.slots, self.synth.generate(call.items, call.sampling), strict=True):
                mels[work][item] = mel
        return mels

    def _write(self, entry: _Planned, mels: list) -> dict:
        result = self.synth.render_best(entry.plan, mels)
        row_id = entry.row["id"]
        path = f"{AUDIO_DIR}/{row_id}.{self.job.format}"
        scratch = self.out.join(PARTIAL_DIR)
        self.out.join(path).write_bytes_atomic(encode_audio(result.audio, result.sample_rate, self.job.format), scratch)
        record = {
            "row": entry.row["row"],
            "id": row_id,
            "status": "written",
            "reason": "",
            "message": "",
            "path": path,
            "duration_s": round(result.duration_s, 6),
            "seed": result.seed,
            "nfe": entry.options.sampling.nfe,
            "voice": entry.voice,
            "text": " ".join(result.chunks),
            "candidates": entry.options.candidates,
            "chosen_seeds": result.chosen_seeds,
        }
        self.out.join(DONE_DIR, f"{row_id}.json").write_bytes_atomic(
            json.dumps(record, ensure_ascii=False).encode(), scratch
        )
        return {**record, "synthesized": True}


def rejection(row: dict, reason: str, message: str) -> dict:
    return {
        "row": row["row"],
        "id": row["id"] if row["reason"] != "bad_id" else "",
        "status": "rejected",
        "reason": reason,
        "message": message,
        "synthesized": False,
    }


def _number(row: dict, name: str, kind: type, default):
    text = row[name].strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError as exc:
        raise InvalidOptionsError(f"{name}={text!r} is not a {kind.__name__}") from exc
