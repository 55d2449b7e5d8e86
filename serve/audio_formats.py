"""Encode float32 mono audio for HTTP responses: wav, flac, mp3, opus (in Ogg) and raw pcm.

Every format carries the same samples: float audio is clipped to [-1, 1] and, for the integer formats,
quantised to 16-bit little-endian PCM. Only ``wav`` and ``pcm`` can be streamed chunk by chunk
(``streaming_wav_header`` announces an unknown length, as live WAV streams do); the compressed formats
are encoded from the whole utterance.
"""

from __future__ import annotations

import io
import struct
from typing import Literal

import numpy as np
import soundfile as sf

AudioFormat = Literal["wav", "flac", "mp3", "opus", "pcm"]
FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "opus", "pcm")
STREAMABLE_FORMATS: tuple[str, ...] = ("wav", "pcm")

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "pcm": "audio/pcm",
}

# (soundfile container, subtype, extra keyword arguments)
_SOUNDFILE_SETTINGS: dict[str, tuple[str, str, dict]] = {
    "wav": ("WAV", "PCM_16", {}),
    "flac": ("FLAC", "PCM_16", {}),
    # libsndfile's default MP3 setting is a ~12 kbit/s VBR; 0.5 at constant rate is ~80 kbit/s at 24 kHz.
    "mp3": ("MP3", "MPEG_LAYER_III", {"compression_level": 0.5, "bitrate_mode": "CONSTANT"}),
    "opus": ("OGG", "OPUS", {}),
}
UNKNOWN_LENGTH = 0xFFFFFFFF


class UnsupportedFormatError(ValueError):
    """An audio format we cannot produce (the message lists the ones we can)."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnsupportedFormatError(f"response_format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    return fmt


def content_type(fmt: str) -> str:
    """The MIME type of a response in ``fmt``; ``pcm`` is 16-bit little-endian mono at the model's rate."""
    return CONTENT_TYPES[check_format(fmt)]


def clip(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """Raw signed 16-bit little-endian samples (what OpenAI calls ``pcm``)."""
    return np.round(clip(audio) * 32767.0).astype("<i2").tobytes()


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A complete file (or raw pcm) holding ``audio`` [samples] float32 at ``sample_rate``."""
    if check_format(fmt) == "pcm":
        return pcm16_bytes(audio)
    container, subtype, extra = _SOUNDFILE_SETTINGS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, clip(audio), sample_rate, format=container, subtype=subtype, **extra)
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int, channels: int = 1, bits_per_sample: int = 16) -> bytes:
    """A 44-byte RIFF/WAVE header for PCM data of unknown length (sizes set to 0xFFFFFFFF)."""
    block_align = channels * bits_per_sample // 8
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_LENGTH)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits_per_sample)
        + b"data"
        + struct.pack("<I", UNKNOWN_LENGTH)
    )
