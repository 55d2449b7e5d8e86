"""Vocoders: Vocos from a folder in the published layout (local or in object storage), and the Griffin-Lim
fallback."""

from __future__ import annotations

import logging
import re
import tempfile

import numpy as np
import pytest
import torch

from flowtts.audio import log_mel_spectrogram
from flowtts.storage import resolve
from flowtts.synthesis import GriffinLimVocoder, VocoderError, VocosVocoder, init_vocos_folder, load_vocoder
from flowtts.synthesis import vocoder as vocoder_module
from tests.helpers.locations import upload


@pytest.fixture(scope="module")
def published_vocos(tmp_path_factory):
    """A randomly initialised Vocos with the published mel-24khz architecture, saved as published, and the
    same network drawn again from the same seed."""
    from vocos import Vocos

    folder = init_vocos_folder(tmp_path_factory.mktemp("vocos-mel-24khz"), seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return folder, Vocos.from_hparams(str(folder / "config.yaml"))


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
    published_yaml = (folder / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(published_yaml)
    with pytest.raises(VocoderError, match="pytorch_model.bin"):
        VocosVocoder.from_folder(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    (tmp_path / "config.yaml").write_text(published_yaml.replace("n_mels: 100", "n_mels: 80"))
    with pytest.raises(VocoderError, match="n_mels=80"):
        VocosVocoder.from_folder(tmp_path)
    (tmp_path / "config.yaml").write_text(published_yaml.replace("vocos.models.VocosBackbone", "os.system"))
    with pytest.raises(VocoderError, match="os.system"):
        VocosVocoder.from_folder(tmp_path)
    with pytest.raises(VocoderError, match="neither a folder"):
        load_vocoder(tmp_path / "no" / "such" / "folder")


@pytest.mark.integration
def test_vocos_folder_in_s3_decodes_as_the_local_one(tmp_path, s3_bucket, monkeypatch):
    folder = init_vocos_folder(tmp_path / "vocos", dim=32, intermediate_dim=64, num_layers=1, seed=5)
    uri = upload(folder, resolve(f"{s3_bucket}/vocos")).uri
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setenv("TMPDIR", str(downloads))  # where the temporary download goes
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR anew
    assert tempfile.gettempdir() == str(downloads)
    remote = load_vocoder(uri)
    assert isinstance(remote, VocosVocoder) and not any(downloads.iterdir())  # loaded, then the copy removed
    mel = torch.randn(1, 100, 23)
    assert torch.equal(remote.decode(mel), load_vocoder(folder).decode(mel))


@pytest.mark.integration
def test_a_remote_uri_without_a_vocos_is_named_not_replaced_by_griffin_lim(tmp_path, s3_bucket):
    with pytest.raises(VocoderError, match=re.escape(f"{s3_bucket}/nothing") + " lacks config.yaml"):
        load_vocoder(f"{s3_bucket}/nothing")
    folder = init_vocos_folder(tmp_path / "vocos", dim=32, intermediate_dim=64, num_layers=1)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(VocoderError, match=re.escape(f"{s3_bucket}/half") + " lacks pytorch_model.bin"):
        load_vocoder(upload(folder, resolve(f"{s3_bucket}/half")).uri)
    with pytest.raises(VocoderError, match=re.escape("'http://host/vocos'")):
        load_vocoder("http://host/vocos")


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
