"""Audio in the system: float32 mono at 24 kHz; log-mel exactly as upstream's Vocos-type mel."""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio

from flowtts.config import MelConfig

DEFAULT_MEL = MelConfig()
# libsndfile clamps a WAV/AIFF whose data chunk runs past the end of the file to the frames present and
# only says so in its log ("data : 48000 (should be 23978)"), so `frames` alone cannot reveal truncation.
# A live stream's WAV header declares an unknown length (0 or 0xFFFFFFFF): that is not truncation.
UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF, 0xFFFFFFFF - 8)
_SHORT_DATA_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ValueError):
    """The input is not audio we can read (names the file and the reason)."""


class TruncatedAudioError(AudioError):
    """The file header promises more frames than the file holds."""


def read_audio(source: str | Path | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Decode anything soundfile reads to float32 ``[frames, channels]`` plus its sample rate.

    Raises AudioError for non-audio input and TruncatedAudioError when fewer frames are present than
    the header declares.
    """
    name = source if isinstance(source, str | Path) else "<bytes>"
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with sf.SoundFile(handle) as f:
            declared = f.frames
            data = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
            short_chunk = _SHORT_DATA_CHUNK.search(f.extra_info)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{name}: not readable as audio ({exc})") from exc
    if short_chunk and int(short_chunk.group(2)) not in UNKNOWN_CHUNK_SIZES:
        chunk, declared_bytes, present_bytes = short_chunk.groups()
        raise TruncatedAudioError(
            f"{name}: header declares a {chunk} chunk of {declared_bytes} bytes but only {present_bytes} are present"
        )
    if declared > 0 and data.shape[0] < declared:
        raise TruncatedAudioError(f"{name}: header declares {declared} frames but only {data.shape[0]} are present")
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio frames")
    return data, rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` -> ``[frames]`` by the channel mean (upstream's downmix)."""
    return data.mean(axis=1, dtype=np.float32) if data.ndim == 2 else data.astype(np.float32)


def resample(wav: torch.Tensor, orig_rate: int, target_rate: int = DEFAULT_MEL.target_sample_rate) -> torch.Tensor:
    """Band-limited resampling with torchaudio (identity when the rates match)."""
    if orig_rate == target_rate:
        return wav
    return torchaudio.functional.resample(wav, orig_rate, target_rate)


def load_audio(
    source: str | Path | bytes | BinaryIO, target_rate: int = DEFAULT_MEL.target_sample_rate
) -> torch.Tensor:
    """Load to float32 mono at ``target_rate``: shape ``[samples]``."""
    data, rate = read_audio(source)
    wav = torch.from_numpy(to_mono(data))
    return resample(wav, rate, target_rate).contiguous()


@functools.lru_cache(maxsize=8)
def _mel_transform(mel: MelConfig, device: str) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=mel.target_sample_rate,
        n_fft=mel.n_fft,
        win_length=mel.win_length,
        hop_length=mel.hop_length,
        n_mels=mel.n_mel_channels,
        power=1,
        center=True,
        normalized=False,
        norm=None,
    ).to(device=device, dtype=torch.float64)


def log_mel_spectrogram(wav: torch.Tensor, mel: MelConfig = DEFAULT_MEL) -> torch.Tensor:
    """``wav [b, samples]`` (or ``[samples]``) at 24 kHz -> natural-log mel ``[b, n_mels, frames]``.

    frames = samples // hop + 1 (centered STFT with reflect padding), as upstream. Computed in float64
    and returned as float32: low-energy bins then sit within float32 rounding of the exact value, where a
    float32 STFT drifts by up to ~2e-4 in log space depending on the FFT backend.
    """
    if wav.ndim == 1:
        wav = wav.unsqueeze(0)
    spec = _mel_transform(mel, str(wav.device))(wav.double())  # [b, n_mels, frames]
    return spec.clamp(min=1e-5).log().float()


def rms(wav: torch.Tensor) -> float:
    return float(wav.float().pow(2).mean().sqrt())


def write_audio(
    path: str | Path | BinaryIO, wav: torch.Tensor | np.ndarray, sample_rate: int, format: str | None = None
) -> None:
    """Write float audio; the peak is limited to 0.999 so nothing clips."""
    data = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    data = data.astype(np.float32).reshape(-1)
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > 0.999:
        data = data * (0.999 / peak)
    sf.write(path, data, sample_rate, format=format)
