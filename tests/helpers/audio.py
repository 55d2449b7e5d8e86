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


def decode_with_ffmpeg(data: bytes) -> tuple[np.ndarray, int]:
    """aac or a streamed FLAC of unknown length (which libsndfile cannot read) read back by FFmpeg (PyAV):
    float32 mono samples and rate."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    samples = np.concatenate(frames)
    if np.issubdtype(samples.dtype, np.integer):  # FLAC decodes to 16-bit integers
        samples = samples / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32), rate
