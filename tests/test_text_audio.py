"""Text (normalisation, vocab files, tokenizer) and audio (decode, downmix, resample, log-mel)."""

from __future__ import annotations

import io
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch

from flowtts.audio import (
    AudioError,
    TruncatedAudioError,
    load_audio,
    log_mel_spectrogram,
    read_audio,
)
from flowtts.text import PAD_ID, UnknownCharactersError, Vocab, normalize_text, pad_token_ids

SENTENCE = "Tiếng Việt có dấu: người ở đâu, ngã, hỏi, nặng."

# ---------------------------------------------------------------- text


def test_nfd_text_tokenises_like_nfc():
    nfc = unicodedata.normalize("NFC", SENTENCE)
    nfd = unicodedata.normalize("NFD", SENTENCE)
    assert nfd != nfc
    vocab = Vocab.from_texts([nfc])
    assert vocab.encode(nfd) == vocab.encode(nfc)
    assert vocab.decode(vocab.encode(nfd)) == nfc


def test_normalisation_collapses_whitespace_and_can_lowercase():
    assert normalize_text("  Xin \t chào\n\nbạn  ") == "Xin chào bạn"
    assert normalize_text("ĐẸP Quá", lowercase=True) == "đẹp quá"


def test_unknown_characters_are_reported_by_name():
    vocab = Vocab([" ", *"acehinotx"])
    with pytest.raises(UnknownCharactersError) as error:
        vocab.encode("xin chào € ẵ €")
    assert error.value.missing == ["à", "€", "ẵ"]
    assert "U+20AC" in str(error.value) and "'ẵ'" in str(error.value)
    assert vocab.missing("chào") == ["à"]


def test_unknown_space_option_maps_to_id_zero_like_upstream():
    vocab = Vocab([" ", *"acehinotx"])
    assert vocab.encode("xin chào", unknown="space") == [9, 5, 6, 0, 2, 4, 0, 7]  # à -> 0


def test_vocab_file_round_trip_and_upstream_layout(tmp_path):
    vocab = Vocab([" ", "a", "ă", "â", ",", "1"])
    path = tmp_path / "vocab.txt"
    vocab.save(path)
    raw = path.read_text(encoding="utf-8")
    assert raw == " \na\nă\nâ\n,\n1\n"  # one token per line, the last line newline-terminated
    assert Vocab.load(path) == vocab
    assert [vocab.index[t] for t in vocab.tokens] == list(range(len(vocab)))  # id = line index
    assert vocab.index[" "] == 0


def test_vocab_file_with_crlf_line_ends_loads_the_same(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b" \r\na\r\nb\r\n")
    assert Vocab.load(path).tokens == [" ", "a", "b"]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["a", " "], "must start with the space token"),
        ([" ", "a", "a"], "duplicate tokens"),
    ],
)
def test_invalid_vocab_is_rejected(tokens, message):
    with pytest.raises(ValueError, match=message):
        Vocab(tokens)


def test_extension_appends_without_moving_old_ids():
    vocab = Vocab([" ", "a", "b"])
    extended, added = vocab.extend(["b", "ẵ", "ỹ", "ẵ"])
    assert added == ["ẵ", "ỹ"]
    assert extended.tokens == [" ", "a", "b", "ẵ", "ỹ"]
    assert extended.encode("ab ẵ") == [1, 2, 0, 3]


def test_batches_are_padded_with_minus_one():
    ids = pad_token_ids([[3, 1], [2, 2, 2], []])
    assert PAD_ID == -1
    assert ids.dtype == torch.long
    assert ids.tolist() == [[3, 1, -1], [2, 2, 2], [-1, -1, -1]]


# ---------------------------------------------------------------- audio

RATE = 24000


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "subtype", "tolerance"),
    [
        ("WAV", "PCM_16", 1 / 2**15),
        ("WAV", "PCM_24", 1 / 2**23),
        ("WAV", "FLOAT", 0.0),
        ("WAVEX", "PCM_16", 1 / 2**15),  # WAVE_FORMAT_EXTENSIBLE header
        ("FLAC", "PCM_16", 1 / 2**15),
        ("FLAC", "PCM_24", 1 / 2**23),
    ],
)
def test_load_audio_decodes_each_format_to_float32_mono(tmp_path, fmt, subtype, tolerance):
    wav = tone(1.0, RATE)
    path = tmp_path / f"clip.{'flac' if fmt == 'FLAC' else 'wav'}"
    sf.write(path, wav, RATE, format=fmt, subtype=subtype)
    if fmt == "WAVEX":
        assert path.read_bytes()[20:22] == b"\xfe\xff"  # format tag 0xFFFE
    out = load_audio(path)
    assert out.dtype == torch.float32 and out.shape == (RATE,)
    assert np.abs(out.numpy() - wav).max() <= tolerance


def test_stereo_44k_is_downmixed_and_resampled_to_24k():
    left, right = tone(1.0, 44100), tone(1.0, 44100, amplitude=0.25)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([left, right], axis=1), 44100, format="WAV", subtype="FLOAT")
    data, rate = read_audio(buffer.getvalue())
    assert rate == 44100 and data.shape == (44100, 2) and data.dtype == np.float32
    out = load_audio(buffer.getvalue())
    assert out.dtype == torch.float32 and out.shape == (RATE,)
    expected = tone(1.0, RATE, amplitude=0.375)  # channel mean, band-limited resampling keeps a 440 Hz tone
    assert np.abs(out.numpy()[200:-200] - expected[200:-200]).max() < 2e-3


def test_file_objects_and_bytes_decode_alike(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(0.5, 16000), 16000, subtype="PCM_16")
    from_path = load_audio(path)
    with path.open("rb") as handle:
        from_handle = load_audio(handle)
    assert from_path.shape == (12000,)
    assert torch.equal(from_path, from_handle)
    assert torch.equal(from_path, load_audio(path.read_bytes()))


def test_truncated_wav_raises_truncated_audio_error(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(1.0, RATE), RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(TruncatedAudioError, match="cut.wav"):
        load_audio(path)


@pytest.mark.parametrize("content", [b"certainly not audio, just some bytes", b""])
def test_non_audio_raises_audio_error(tmp_path, content):
    path = tmp_path / "notes.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="notes.wav"):
        load_audio(path)
    with pytest.raises(AudioError):
        load_audio(content)


@pytest.mark.parametrize("samples", [1000, 2560, 2815, RATE])
def test_mel_has_samples_over_hop_plus_one_frames(samples):
    wav = torch.from_numpy(np.stack([tone(samples / RATE, RATE), tone(samples / RATE, RATE, 220.0)]))
    mel = log_mel_spectrogram(wav)
    assert mel.shape == (2, 100, samples // 256 + 1)
    assert mel.dtype == torch.float32
    assert float(mel.min()) >= np.log(1e-5) - 1e-6  # natural log of magnitudes clamped at 1e-5
    assert log_mel_spectrogram(wav[0]).shape == (1, 100, samples // 256 + 1)
