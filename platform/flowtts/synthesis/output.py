"""Writing synthesised audio: wav, flac, ogg/opus, mp3 or raw 16-bit PCM (soundfile), never clipping."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from flowtts.synthesis.errors import InvalidOptionsError

PEAK_LIMIT = 0.999
LOSSY_PEAK_LIMIT = 0.891  # -1 dBFS: mp3 and opus decoders overshoot the input peak by a few percent
LOSSY_FORMATS = frozenset({"ogg", "opus", "mp3"})
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {  # name -> (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "OPUS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "raw": ("RAW", "PCM_16"),
    "pcm": ("RAW", "PCM_16"),
}


def limit_peak(audio: np.ndarray, peak: float = PEAK_LIMIT) -> np.ndarray:
    """Scale down only when the loudest sample would clip; float32 out."""
    loudest = float(np.abs(audio).max()) if audio.size else 0.0
    out = audio * (peak / loudest) if loudest > peak else audio
    return np.asarray(out, dtype=np.float32)


def output_format(path: str | Path) -> str:
    """The format named by a file's extension (``out.flac`` -> ``flac``)."""
    name = Path(path).suffix.lower().lstrip(".")
    if name not in OUTPUT_FORMATS:
        raise InvalidOptionsError(
            f"output {str(path)!r}: unknown audio extension {name!r}; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    return name


def write_output(target: str | Path | BinaryIO, audio: np.ndarray, sample_rate: int, fmt: str | None = None) -> None:
    """Write mono float audio, peak-limited (with 1 dB more headroom for lossy formats); ``fmt`` defaults
    to the path's extension."""
    name = fmt or output_format(target)  # type: ignore[arg-type]
    if name not in OUTPUT_FORMATS:
        raise InvalidOptionsError(f"unknown audio format {name!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    container, subtype = OUTPUT_FORMATS[name]
    peak = LOSSY_PEAK_LIMIT if name in LOSSY_FORMATS else PEAK_LIMIT
    data = limit_peak(np.asarray(audio).reshape(-1), peak)
    sf.write(target, data, sample_rate, format=container, subtype=subtype)


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """The bytes of ``write_output`` in memory (for HTTP responses)."""
    buffer = io.BytesIO()
    write_output(buffer, audio, sample_rate, fmt)
    return buffer.getvalue()
