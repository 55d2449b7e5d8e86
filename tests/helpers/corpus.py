"""Writing small corpora on disk: tones as wav files, metadata text files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, rate: int = 24000, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_wav(path: Path, seconds: float = 1.0, rate: int = 24000, channels: int = 1, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = kwargs.pop("subtype", "PCM_16")
    sf.write(path, tone(seconds, rate, channels, **kwargs), rate, subtype=subtype)
    return path


def write_text(path: Path, lines: list[str], *, bom: bool = False, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(f"{line}{newline}" for line in lines).encode())
    return path
