"""The reference voice, prepared as upstream's ``preprocess_ref_audio_text`` and ``infer_batch_process`` do.

Audio: mono 24 kHz; clipped to at most 12 s at a silence boundary (first pauses of 1 s at -50 dBFS, then
of 0.1 s at -40 dBFS, else a hard cut); leading and trailing silence below -42 dBFS trimmed; 50 ms of
silence appended; raised to RMS ``target_rms`` (0.1) when quieter, the output being scaled back by the same factor.
Upstream runs the silence steps with pydub on the file as given; we run them on the 24 kHz mono signal.

Text: the front end first (the model was trained on its output), then upstream's ending rule: a
transcript not ending in ". " or "。" gets " " after a final "." and ". " otherwise. Upstream joins it
to each chunk with one more space when its last character is one UTF-8 byte, so the prompt text of a
Latin-script transcript ends in ".  "; we keep that, tokens and byte counts included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from flowtts.audio import DEFAULT_MEL, AudioError, load_audio, log_mel_spectrogram, resample
from flowtts.config import MelConfig
from flowtts.synthesis.errors import EmptyTextError, InvalidOptionsError, ReferenceAudioError, UnspeakableTextError
from flowtts.synthesis.silence import split_on_silence, trim_silence_edges
from flowtts.text import Vocab

MAX_REFERENCE_S = 12.0
CLIP_AFTER_S = 6.0  # a segment that would pass MAX_REFERENCE_S ends the reference once this much is kept
CLIP_RULES = ((1000, -50.0), (100, -40.0))  # (min pause ms, threshold dBFS), tried in order
KEEP_SILENCE_MS = 1000
TRIM_THRESH_DB = -42.0
MIN_REFERENCE_S = 0.3
TAIL_SILENCE_S = 0.05
TARGET_RMS = 0.1
MAX_TARGET_RMS = 1.0

AudioInput = str | Path | bytes | np.ndarray | torch.Tensor


@dataclass
class Reference:
    """A prepared reference voice; immutable in use and shareable between requests."""

    audio: np.ndarray  # [samples] float32 at 24 kHz, processed and raised to the target RMS if quieter
    mel: torch.Tensor  # [n_ref, n_mels] log-mel of audio; n_ref = samples // hop + 1
    text: str  # transcript after the front end, ending in ". " (or "。")
    prompt_text: str  # text as put before every chunk (upstream's extra joining space included)
    tokens: list[int]  # ids of prompt_text
    rms_scale: float  # factor for the generated audio: original RMS / target RMS when raised, else 1
    duration_s: float  # seconds of audio
    prompt_frames: int  # samples // hop: frames upstream cuts from the front of the generated mel
    transcript: str = ""  # the transcript as given (or as an ASR model heard it), before the front end


def prepare_reference(
    audio: AudioInput,
    text: str,
    sample_rate: int | None = None,
    *,
    vocab: Vocab,
    frontend: Callable[[str], str],
    mel: MelConfig = DEFAULT_MEL,
    unknown: Literal["error", "space"] = "error",
    target_rms: float = TARGET_RMS,
) -> Reference:
    """Load, condition and tokenise a reference voice and its transcript (see the module docstring)."""
    ref_text = reference_text(text, frontend)
    prompt = prompt_text(ref_text)
    tokens = encode_prompt(vocab, prompt, unknown)
    wav, rms_scale = condition_audio(
        load_reference_audio(audio, sample_rate, mel.target_sample_rate), mel.target_sample_rate, target_rms
    )
    ref_mel = log_mel_spectrogram(torch.from_numpy(wav), mel)[0].T.contiguous()  # [n_ref, n_mels]
    return Reference(
        audio=wav,
        mel=ref_mel,
        text=ref_text,
        prompt_text=prompt,
        tokens=tokens,
        rms_scale=rms_scale,
        duration_s=len(wav) / mel.target_sample_rate,
        prompt_frames=len(wav) // mel.hop_length,
        transcript=text,
    )


# ---------------------------------------------------------------- text


def speakable_text(text: str, frontend: Callable[[str], str], what: str) -> str:
    """The front end's output, or a typed error when ``text`` is empty or nothing speakable is left."""
    if not text or not text.strip():
        raise EmptyTextError(f"{what} is empty ({text!r})")
    spoken = frontend(text).strip()
    if not any(ch.isalnum() for ch in spoken):
        raise UnspeakableTextError(
            f"{what} {text[:80]!r} has nothing speakable (no letter or digit) after "
            f"the text front end (got {spoken[:80]!r})"
        )
    return spoken


def reference_text(text: str, frontend: Callable[[str], str]) -> str:
    """Front end, then upstream's ending: ". " unless it already ends in ". " or "。"."""
    spoken = speakable_text(text, frontend, "reference text")
    if spoken.endswith((". ", "。")):
        return spoken
    return spoken + (" " if spoken.endswith(".") else ". ")


def prompt_text(ref_text: str) -> str:
    """Upstream adds a space after a reference text whose last character is a single UTF-8 byte."""
    return ref_text + " " if len(ref_text[-1].encode("utf-8")) == 1 else ref_text


def encode_prompt(vocab: Vocab, text: str, unknown: Literal["error", "space"] = "error") -> list[int]:
    """Tokenise with trailing spaces kept (``Vocab.encode`` strips them; each one is a space token)."""
    body = text.rstrip(" ")
    return vocab.encode(body, unknown=unknown) + [vocab.index[" "]] * (len(text) - len(body))


# ---------------------------------------------------------------- audio


def load_reference_audio(
    audio: AudioInput, sample_rate: int | None, target_rate: int, what: str = "reference audio"
) -> np.ndarray:
    """Any accepted input -> float32 mono ``[samples]`` at ``target_rate`` (errors name ``what``)."""
    if isinstance(audio, str | Path | bytes):
        try:
            return load_audio(audio, target_rate).numpy()
        except AudioError as exc:
            raise ReferenceAudioError(f"{what} {_describe(audio)} is not usable: {exc}") from exc
    if isinstance(audio, np.ndarray | torch.Tensor):
        if sample_rate is None:
            raise ReferenceAudioError(f"{what} given as an array needs its sample_rate")
        return resample(torch.from_numpy(_mono_float(audio, what)), sample_rate, target_rate).numpy()
    raise ReferenceAudioError(
        f"{what} of type {type(audio).__name__} is not supported "
        "(use a path, bytes of an audio file, or a numpy/torch array)"
    )


def condition_audio(wav: np.ndarray, sample_rate: int, target_rms: float = TARGET_RMS) -> tuple[np.ndarray, float]:
    """Clip, trim, check the length, append the tail silence and raise to ``target_rms``: (audio, rms_scale)."""
    trimmed = trim_silence_edges(clip_at_silence(wav, sample_rate), sample_rate, TRIM_THRESH_DB)
    seconds = len(trimmed) / sample_rate
    if seconds < MIN_REFERENCE_S:
        raise ReferenceAudioError(
            f"reference audio has {seconds:.3f} s of sound after trimming silence below {TRIM_THRESH_DB} "
            f"dBFS "
            f"(from {len(wav) / sample_rate:.3f} s); at least {MIN_REFERENCE_S} s is needed"
        )
    tail = np.zeros(int(TAIL_SILENCE_S * sample_rate), dtype=np.float32)
    return raise_to_rms(np.concatenate([trimmed, tail]).astype(np.float32), target_rms)


def raise_to_rms(wav: np.ndarray, target_rms: float = TARGET_RMS) -> tuple[np.ndarray, float]:
    """Upstream's loudness rule: audio quieter than ``target_rms`` is raised to it; (audio, the factor that
    brings generated audio back to the original loudness)."""
    if not 0 < target_rms <= MAX_TARGET_RMS:
        raise InvalidOptionsError(f"target_rms={target_rms!r} is not allowed; use > 0 and <= {MAX_TARGET_RMS}")
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    if rms >= target_rms or rms == 0.0:
        return wav, 1.0
    return (wav * (target_rms / rms)).astype(np.float32), rms / target_rms


def clip_at_silence(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """At most MAX_REFERENCE_S: whole segments between pauses, else a hard cut (upstream's three steps)."""
    limit = int(MAX_REFERENCE_S * sample_rate)
    kept = wav
    for min_silence_ms, thresh_db in CLIP_RULES:
        segments = split_on_silence(wav, sample_rate, min_silence_ms, thresh_db, KEEP_SILENCE_MS)
        kept = _accumulate(segments, sample_rate)
        if len(kept) <= limit:
            return kept
    return kept[:limit]


def _accumulate(segments: list[np.ndarray], sample_rate: int) -> np.ndarray:
    kept, total = [], 0
    for segment in segments:
        if total > CLIP_AFTER_S * sample_rate and total + len(segment) > MAX_REFERENCE_S * sample_rate:
            break
        kept.append(segment)
        total += len(segment)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)


def _mono_float(audio: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    data = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if np.issubdtype(data.dtype, np.integer):
        data = data / float(np.iinfo(data.dtype).max + 1)
    if data.ndim == 2:
        data = data.mean(axis=int(np.argmin(data.shape)))  # the shorter axis holds the channels
    if data.ndim != 1 or data.size == 0:
        raise ReferenceAudioError(
            f"{what} array has shape {tuple(audio.shape)}; expected [samples] or [channels, samples]"
        )
    if not np.isfinite(data).all():
        raise ReferenceAudioError(f"{what} array holds NaN or infinite samples")
    return data.astype(np.float32)


def _describe(audio: str | Path | bytes) -> str:
    return f"<{len(audio)} bytes>" if isinstance(audio, bytes) else repr(str(audio))
