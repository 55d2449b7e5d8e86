"""Vocoders: Vocos from a local folder in the published layout, and the Griffin-Lim fallback."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from flowtts.audio import log_mel_spectrogram
from flowtts.synthesis import GriffinLimVocoder, VocoderError, VocosVocoder, load_vocoder
from flowtts.synthesis import vocoder as vocoder_module

VOCOS_YAML = (
    "feature_extractor: {class_path: vocos.feature_extractors.MelSpectrogramFeatures,\n"
    "  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}}\n"
    "backbone: {class_path: vocos.models.VocosBackbone,\n"
    "  init_args: {input_channels: 100, dim: 512, intermediate_dim: 1536, num_layers: 8}}\n"
    "head: {class_path: vocos.heads.ISTFTHead,\n"
    "  init_args: {dim: 512, n_fft: 1024, hop_length: 256, padding: center}}\n"
)


@pytest.fixture(scope="module")
def published_vocos(tmp_path_factory):
    """A randomly initialised Vocos with the published mel-24khz architecture, saved as published."""
    from vocos import Vocos

    folder = tmp_path_factory.mktemp("vocos-mel-24khz")
    (folder / "config.yaml").write_text(VOCOS_YAML)
    torch.manual_seed(0)
    model = Vocos.from_hparams(str(folder / "config.yaml"))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder, model


def test_vocos_loads_from_folder_and_decodes(published_vocos):
    folder, original = published_vocos
    vocoder = load_vocoder(folder)
    assert isinstance(vocoder, VocosVocoder) and vocoder.sample_rate == 24000
    mel = torch.randn(2, 100, 57)
    audio = vocoder.decode(mel)
    assert audio.shape == (2, (57 - 1) * 256) and audio.dtype == torch.float32
    assert torch.allclose(audio, original.decode(mel), atol=1e-6)  # the weights were loaded, not re-drawn


def test_vocos_folder_problems_are_named(published_vocos, tmp_path):
    folder, _ = published_vocos
    (tmp_path / "config.yaml").write_text(VOCOS_YAML)
    with pytest.raises(VocoderError, match="pytorch_model.bin"):
        VocosVocoder.from_folder(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    (tmp_path / "config.yaml").write_text(VOCOS_YAML.replace("n_mels: 100", "n_mels: 80"))
    with pytest.raises(VocoderError, match="n_mels=80"):
        VocosVocoder.from_folder(tmp_path)
    (tmp_path / "config.yaml").write_text(VOCOS_YAML.replace("vocos.models.VocosBackbone", "os.system"))
    with pytest.raises(VocoderError, match="os.system"):
        VocosVocoder.from_folder(tmp_path)
    with pytest.raises(VocoderError, match="neither a folder"):
        load_vocoder(tmp_path / "no" / "such" / "folder")


def test_griffin_lim_fallback_length_and_one_warning(caplog):
    vocoder_module._warn_griffin_lim_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="flowtts.synthesis.vocoder"):
        first = load_vocoder(None)
        second = load_vocoder("nobody-here/not-a-cached-vocos")  # repo id absent from the HF cache
    assert isinstance(first, GriffinLimVocoder) and isinstance(second, GriffinLimVocoder)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Griffin-Lim" in warnings[0].getMessage()
    mel = torch.randn(1, 100, 41)
    assert first.decode(mel).shape == (1, 40 * 256)


def test_griffin_lim_reconstructs_a_tone():
    t = torch.arange(24000) / 24000
    wav = (0.4 * torch.sin(2 * np.pi * 220 * t) + 0.2 * torch.sin(2 * np.pi * 440 * t)).float()
    mel = log_mel_spectrogram(wav)
    audio = GriffinLimVocoder(n_iter=16).decode(mel)
    assert audio.shape[-1] == (mel.shape[-1] - 1) * 256
    again = log_mel_spectrogram(audio)[..., 4:-4]
    assert float((again - mel[..., 4:-4]).abs().mean()) < 0.5  # close in log-mel, not just the right length
