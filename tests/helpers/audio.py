"""Reading back what the server streams."""

from __future__ import annotations

import struct

import numpy as np


def decode_stream_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Read back a streamed WAV (header of unknown length + 16-bit PCM): float32 samples and rate."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE" or data[36:40] != b"data":
        raise ValueError("not a streamed 16-bit PCM WAV (expected a 44-byte RIFF header)")
    sample_rate = struct.unpack("<I", data[24:28])[0]
    return np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32767.0, sample_rate
