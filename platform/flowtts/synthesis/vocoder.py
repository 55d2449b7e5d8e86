"""Mel -> waveform: Vocos (the published ``charactr/vocos-mel-24khz`` layout) or a Griffin-Lim fallback.

Vocos loads from a folder holding ``config.yaml`` + ``pytorch_model.bin`` (local, or a URI ``flowtts.storage``
reads such as ``s3://bucket/vocos``, downloaded to a temporary folder for loading), or from a Hugging Face
repo id that is already in the local cache; nothing is downloaded from the Hub unless the caller allows it.
With no weights configured, or a repo id not cached, ``load_vocoder`` returns Griffin-Lim (torchaudio) and
warns once per process, so the system still speaks offline, if robotically; a folder or URI that holds no
valid Vocos raises ``VocoderError``. Both produce ``(frames - 1) * hop`` samples.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Protocol

import torch
import torchaudio
import yaml

from flowtts.audio import DEFAULT_MEL
from flowtts.config import MelConfig
from flowtts.storage import Location, StorageError, is_remote, resolve

logger = logging.getLogger(__name__)

DEFAULT_VOCOS_REPO = "charactr/vocos-mel-24khz"
CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "pytorch_model.bin"
# Classes a Vocos config may name (from_hparams imports whatever class_path says, so we check first).
ALLOWED_CLASSES = {
    "feature_extractor": "vocos.feature_extractors.MelSpectrogramFeatures",
    "backbone": "vocos.models.VocosBackbone",
    "head": "vocos.heads.ISTFTHead",
}
# A Hugging Face repo id ("owner/name"); the judge models of the evaluation use it too.
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class VocoderError(ValueError):
    """Vocoder weights are missing or do not match our mel (the message names the file and value)."""


class Vocoder(Protocol):
    sample_rate: int

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """``mel [b, n_mels, frames]`` natural-log mel -> ``[b, (frames - 1) * hop]`` float32 audio."""
        ...


class VocosVocoder:
    """A loaded ``vocos.Vocos`` in eval mode; decoding runs in float32 without autograd."""

    def __init__(self, vocos, *, mel: MelConfig = DEFAULT_MEL, device: str | torch.device = "cpu"):
        self.sample_rate = mel.target_sample_rate
        self.device = torch.device(device)
        self.vocos = vocos.to(self.device).eval()

    @classmethod
    def from_folder(
        cls, path: str | Path | Location, *, mel: MelConfig = DEFAULT_MEL, device: str | torch.device = "cpu"
    ) -> VocosVocoder:
        """A Vocos folder: a path, or a URI whose files are downloaded to a temporary folder for loading."""
        from vocos import Vocos

        folder = resolve(path)
        config_file, weights_file = folder.join(CONFIG_FILE), folder.join(WEIGHTS_FILE)
        for required in (config_file, weights_file):
            if not required.is_file():
                raise VocoderError(
                    f"Vocos folder {folder} lacks {required.name} (the published layout is "
                    f"{CONFIG_FILE} + {WEIGHTS_FILE})"
                )
        check_vocos_config(yaml.safe_load(config_file.read_text()), mel, source=config_file.uri)
        with folder.local_folder() as local:
            vocos = Vocos.from_hparams(str(local / CONFIG_FILE))
            vocos.load_state_dict(torch.load(local / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        return cls(vocos, mel=mel, device=device)

    @torch.inference_mode()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocos.decode(mel.to(self.device, torch.float32))  # [b, (frames - 1) * hop]


class GriffinLimVocoder:
    """Inverse of our mel (HTK scale, no filter norm, magnitude) by least squares, then Griffin-Lim."""

    def __init__(self, *, mel: MelConfig = DEFAULT_MEL, n_iter: int = 32, device: str | torch.device = "cpu"):
        self.sample_rate = mel.target_sample_rate
        self.mel = mel
        self.n_iter = n_iter
        self.device = torch.device(device)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=mel.n_fft // 2 + 1,
            n_mels=mel.n_mel_channels,
            sample_rate=mel.target_sample_rate,
            f_min=0.0,
            f_max=None,
            norm=None,
            mel_scale="htk",
        ).to(self.device)
        self.window = torch.hann_window(mel.win_length, device=self.device)

    @torch.inference_mode()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1]
        magnitude = self.inverse_mel(mel.to(self.device, torch.float32).exp()).clamp(min=0)  # [b, freqs, n]
        return torchaudio.functional.griffinlim(
            magnitude,
            self.window,
            n_fft=self.mel.n_fft,
            hop_length=self.mel.hop_length,
            win_length=self.mel.win_length,
            power=1.0,
            n_iter=self.n_iter,
            momentum=0.99,
            length=(frames - 1) * self.mel.hop_length,
            rand_init=False,
        )  # [b, (frames - 1) * hop]


def load_vocoder(
    path_or_repo: str | Path | None,
    *,
    allow_download: bool = False,
    mel: MelConfig = DEFAULT_MEL,
    device: str | torch.device = "cpu",
) -> Vocoder:
    """A Vocos folder (local or a storage URI), a cached (or, if allowed, downloaded) HF repo id, else Griffin-Lim.

    A path that exists or a URI must hold a valid Vocos folder (errors are raised, not papered over); a repo
    id that is not cached falls back to Griffin-Lim, as does ``None``.
    """
    if path_or_repo is None:
        return _griffin_lim_fallback("no vocoder configured", mel, device)
    text = str(path_or_repo)
    if is_remote(text):  # a folder every node reaches; never Griffin-Lim in its place
        try:
            location = resolve(text)
        except StorageError as exc:  # an unknown scheme (http://, ...)
            raise VocoderError(f"vocoder {text!r} cannot be read as a Vocos folder: {exc}") from exc
        return VocosVocoder.from_folder(location, mel=mel, device=device)
    folder = Path(path_or_repo).expanduser()
    if folder.is_dir():
        return VocosVocoder.from_folder(folder, mel=mel, device=device)
    if not REPO_ID.match(text):
        raise VocoderError(f"vocoder {text!r} is neither a folder (a path or a URI) nor a Hugging Face repo id")
    cached = hf_vocos_folder(text, allow_download=allow_download)
    if cached is None:
        return _griffin_lim_fallback(
            f"{path_or_repo} is not in the Hugging Face cache and downloading is not allowed", mel, device
        )
    return VocosVocoder.from_folder(cached, mel=mel, device=device)


def hf_vocos_folder(repo_id: str, *, allow_download: bool = False) -> Path | None:
    """The snapshot folder of ``repo_id`` holding both Vocos files, from the cache or a permitted download."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    if all(isinstance(path, str) for path in found) and Path(found[0]).parent == Path(found[1]).parent:
        return Path(found[0]).parent
    if not allow_download:
        return None
    return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))


def init_vocos_folder(
    folder: str | Path,
    *,
    mel: MelConfig = DEFAULT_MEL,
    dim: int = 512,
    intermediate_dim: int = 1536,
    num_layers: int = 8,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Vocos for ``mel`` in the published folder layout and return the folder.

    The defaults are the ``charactr/vocos-mel-24khz`` architecture. This is the starting point for
    training a vocoder, and what tests and benchmarks load when the published weights are not at hand.
    The weights are drawn from ``seed`` without touching the caller's random state.
    """
    from vocos import Vocos

    features = {
        "sample_rate": mel.target_sample_rate,
        "n_fft": mel.n_fft,
        "hop_length": mel.hop_length,
        "n_mels": mel.n_mel_channels,
        "padding": "center",
    }
    config = {
        "feature_extractor": {"class_path": ALLOWED_CLASSES["feature_extractor"], "init_args": features},
        "backbone": {
            "class_path": ALLOWED_CLASSES["backbone"],
            "init_args": {
                "input_channels": mel.n_mel_channels,
                "dim": dim,
                "intermediate_dim": intermediate_dim,
                "num_layers": num_layers,
            },
        },
        "head": {
            "class_path": ALLOWED_CLASSES["head"],
            "init_args": {"dim": dim, "n_fft": mel.n_fft, "hop_length": mel.hop_length, "padding": "center"},
        },
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocos = Vocos.from_hparams(str(folder / CONFIG_FILE))
    torch.save(vocos.state_dict(), folder / WEIGHTS_FILE)
    return folder


def check_vocos_config(config: dict, mel: MelConfig, *, source: str | Path) -> None:
    """Only the known Vocos classes, with our sample rate, FFT, hop and mel count."""
    for part, class_path in ALLOWED_CLASSES.items():
        got = (config.get(part) or {}).get("class_path")
        if got != class_path:
            raise VocoderError(f"{source}: {part}.class_path is {got!r}; expected {class_path!r}")
    expected = {
        "sample_rate": mel.target_sample_rate,
        "n_fft": mel.n_fft,
        "hop_length": mel.hop_length,
        "n_mels": mel.n_mel_channels,
    }
    features = config["feature_extractor"].get("init_args", {})
    for key, value in expected.items():
        if features.get(key) != value:
            raise VocoderError(
                f"{source}: feature_extractor {key}={features.get(key)!r} does not match our mel ({key}={value})"
            )


def _griffin_lim_fallback(reason: str, mel: MelConfig, device: str | torch.device) -> GriffinLimVocoder:
    logger.info("Griffin-Lim vocoder: %s", reason)
    _warn_griffin_lim_once()
    return GriffinLimVocoder(mel=mel, device=device)


@functools.cache
def _warn_griffin_lim_once() -> None:
    logger.warning(
        "No Vocos weights available: using the Griffin-Lim vocoder, which sounds metallic. Pass a Vocos "
        "folder (%s + %s; a path or a URI) or a Hugging Face repo id already in the local cache (e.g. %s).",
        CONFIG_FILE,
        WEIGHTS_FILE,
        DEFAULT_VOCOS_REPO,
    )
