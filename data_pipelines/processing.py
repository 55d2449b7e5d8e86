"""Per-clip work done by Ray Data workers: read, decode, check, downmix, resample to 24 kHz, log-mel.

The audio is read here, on the node that runs the task, from the corpus location (a local folder every
node sees, or a ``flowtts.storage`` URI such as ``s3://bucket/corpus``): the driver never downloads it.

Each stage is a plain function so the benchmark's single-process loop runs exactly the same code.
A clip that fails a check comes back as a rejection record in the same batch, never as an exception.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import soundfile as sf
import torch

from data_pipelines.reading import Reason, RowRejected, clip_key
from flowtts.audio import AudioError, TruncatedAudioError, log_mel_spectrogram, read_audio, resample, to_mono
from flowtts.config import MelConfig
from flowtts.shards import encode_mel
from flowtts.storage import Location, StorageError, resolve

SILENCE_PEAK = 1e-4
"""A clip whose absolute peak (all channels) is below this is digital silence: -80 dBFS, about 3 LSB of
16-bit PCM. Quiet but real speech peaks far above it (the dev corpus is normalised to -1 dBFS)."""

PROCESSED_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("audio_file", pa.string()),
        ("text", pa.string()),
        ("speaker", pa.string()),
        ("duration", pa.float64()),
        ("n_frames", pa.int32()),
        ("mel", pa.large_binary()),
        ("sha256", pa.string()),  # of the file's bytes; empty when the file could not be read
        ("reason", pa.string()),  # null for kept clips
        ("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class ClipLimits:
    min_duration: float = 0.3
    max_duration: float = 30.0
    silence_peak: float = SILENCE_PEAK

    def __post_init__(self) -> None:
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(f"need 0 <= min_duration < max_duration, got {self.min_duration} and {self.max_duration}")
        if self.silence_peak < 0:
            raise ValueError(f"silence_peak must be >= 0, got {self.silence_peak}")


@dataclass(frozen=True)
class DecodedClip:
    samples: np.ndarray  # float32 [frames, channels]
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def read_clip_bytes(corpus: Location, audio_file: str) -> bytes:
    """The bytes of ``audio_file`` (already checked by ``reading.check_clip_path``) inside ``corpus``."""
    clip = corpus.join(clip_key(audio_file))
    if clip.is_local:  # links are followed, but only to files inside the corpus
        real, root = os.path.realpath(clip.path), os.path.realpath(corpus.path)
        if os.path.commonpath([real, root]) != root:
            raise RowRejected(Reason.PATH_OUTSIDE_CORPUS, f"{audio_file!r} is a link to {real}, outside {root}")
        clip = resolve(real)
    try:
        return clip.read_bytes()
    except StorageError as exc:
        if not clip.exists():
            raise RowRejected(Reason.MISSING_FILE, f"{audio_file!r} does not exist in {corpus}") from exc
        if not clip.is_file():
            raise RowRejected(Reason.UNREADABLE_AUDIO, f"{audio_file!r} is not a regular file") from exc
        raise RowRejected(Reason.UNREADABLE_AUDIO, str(exc)) from exc


def decode_clip(blob: bytes) -> DecodedClip:
    """Bytes -> samples; every decoding problem becomes a RowRejected with its reason."""
    if not blob:
        raise RowRejected(Reason.UNREADABLE_AUDIO, "the file is empty (0 bytes)")
    try:
        samples, rate = read_audio(blob)
    except TruncatedAudioError as exc:
        raise RowRejected(Reason.TRUNCATED_AUDIO, str(exc).removeprefix("<bytes>: ")) from exc
    except (AudioError, sf.SoundFileError, ValueError, RuntimeError) as exc:
        raise RowRejected(Reason.UNREADABLE_AUDIO, str(exc).removeprefix("<bytes>: ")) from exc
    if not np.isfinite(samples).all():
        raise RowRejected(Reason.UNREADABLE_AUDIO, "the file holds NaN or infinite samples")
    return DecodedClip(samples, rate)


def check_clip(clip: DecodedClip, limits: ClipLimits) -> None:
    if clip.duration < limits.min_duration:
        raise RowRejected(
            Reason.TOO_SHORT, f"{clip.duration:.3f} s is shorter than the minimum {limits.min_duration} s"
        )
    if clip.duration > limits.max_duration:
        raise RowRejected(Reason.TOO_LONG, f"{clip.duration:.3f} s is longer than the maximum {limits.max_duration} s")
    peak = float(np.abs(clip.samples).max())
    if peak < limits.silence_peak:
        raise RowRejected(
            Reason.SILENT,
            f"peak amplitude {peak:.2e} is below the silence threshold {limits.silence_peak:.0e}",
        )


def mono_at_rate(clip: DecodedClip, target_rate: int) -> torch.Tensor:
    """Downmix and resample: float32 ``[samples]`` at ``target_rate``."""
    return resample(torch.from_numpy(to_mono(clip.samples)), clip.sample_rate, target_rate).contiguous()


def clip_mel(wav: torch.Tensor, mel: MelConfig) -> torch.Tensor:
    """``[samples]`` -> time-major log-mel ``[n_frames, n_mels]``."""
    return log_mel_spectrogram(wav, mel)[0].T.contiguous()


def process_row(row: dict, corpus: Location, limits: ClipLimits, mel: MelConfig) -> dict:
    """One driver-checked row (line, audio_file, text, speaker) -> a PROCESSED_SCHEMA record."""
    record = {key: row[key] for key in ("line", "audio_file", "text", "speaker")}
    record.update(duration=None, n_frames=None, mel=None, sha256="", reason=None, detail=None)
    try:
        blob = read_clip_bytes(corpus, row["audio_file"])
        record["sha256"] = hashlib.sha256(blob).hexdigest()
        clip = decode_clip(blob)
        check_clip(clip, limits)
        wav = mono_at_rate(clip, mel.target_sample_rate)
        frames = clip_mel(wav, mel)
    except RowRejected as rejected:
        record.update(reason=str(rejected.reason), detail=rejected.detail)
        return record
    record.update(duration=wav.numel() / mel.target_sample_rate, n_frames=frames.shape[0], mel=encode_mel(frames))
    return record


def process_batch(batch: pa.Table, corpus: Location, limits: ClipLimits, mel: MelConfig) -> pa.Table:
    """The ``map_batches`` function: a pyarrow batch of rows -> kept clips and rejections together."""
    records = [process_row(row, corpus, limits, mel) for row in batch.to_pylist()]
    return pa.Table.from_pylist(records, schema=PROCESSED_SCHEMA)
