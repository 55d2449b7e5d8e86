"""Encode float32 mono audio for HTTP responses: wav, flac, mp3, opus (in Ogg) and raw pcm.

Every format carries the same samples: float audio is clipped to [-1, 1] and, for the integer formats,
quantised to 16-bit little-endian PCM. ``StreamEncoder`` encodes a stream chunk by chunk, one encoder
kept open per request: ``wav`` is a header of unknown length (as live WAV streams are) then PCM, ``pcm``
is raw, and flac, mp3 and opus come out of libsndfile incrementally (an encoder writing into a buffer
whose new bytes are sent as they appear; a header the encoder rewrites at the end is not resent: a
streamed FLAC announces no total length). ``aac`` (ADTS) is encoded by PyAV's bundled FFmpeg, from the
whole utterance only.
"""

from __future__ import annotations

import io
import struct
from typing import Literal

import numpy as np
import soundfile as sf

AudioFormat = Literal["wav", "flac", "mp3", "opus", "aac", "pcm"]
FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "opus", "aac", "pcm")
STREAMABLE_FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "opus", "pcm")

CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "aac": "audio/aac",
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
    if fmt == "aac":
        return encode_aac(audio, sample_rate)
    container, subtype, extra = _SOUNDFILE_SETTINGS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, clip(audio), sample_rate, format=container, subtype=subtype, **extra)
    return buffer.getvalue()


def encode_aac(audio: np.ndarray, sample_rate: int, bit_rate: int = 64000) -> bytes:
    """AAC-LC in an ADTS stream (what OpenAI sends for ``aac``), by FFmpeg's native encoder through PyAV."""
    import av  # a large library: imported when aac is asked for

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(clip(audio)[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


class StreamEncoder:
    """``encode(samples) -> bytes ready now``, ``finish() -> the rest``; one per streamed response."""

    def __init__(self, fmt: str, sample_rate: int):
        if check_format(fmt) not in STREAMABLE_FORMATS:
            raise UnsupportedFormatError(
                f"response_format {fmt!r} cannot be streamed; stream one of {', '.join(STREAMABLE_FORMATS)}"
            )
        self.fmt = fmt
        self.header = streaming_wav_header(sample_rate) if fmt == "wav" else b""
        self.file: sf.SoundFile | None = None
        if fmt in _SOUNDFILE_SETTINGS and fmt != "wav":
            container, subtype, extra = _SOUNDFILE_SETTINGS[fmt]
            self.buffer = io.BytesIO()
            self.sent = 0
            self.file = sf.SoundFile(self.buffer, "w", sample_rate, 1, subtype, format=container, **extra)

    def encode(self, samples: np.ndarray) -> bytes:
        if self.file is None:
            data, self.header = self.header + pcm16_bytes(samples), b""
            return data
        if len(samples):
            self.file.write(clip(samples))
        return self._new_bytes()

    def finish(self) -> bytes:
        if self.file is None:
            data, self.header = self.header, b""
            return data
        self.file.close()
        return self._new_bytes()

    def _new_bytes(self) -> bytes:
        with self.buffer.getbuffer() as view:
            data = bytes(view[self.sent :])
        self.sent += len(data)
        return data


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
