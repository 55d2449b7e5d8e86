"""Test helper: tiny randomly initialised speech models in the Hugging Face layout, written to local folders
(nothing is downloaded). ``write_ctc_asr`` is rigged to hear one word, so what it transcribes is known."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 48,
    "conv_dim": (16, 16, 16),
    "conv_stride": (5, 4, 4),
    "conv_kernel": (10, 8, 8),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
LETTERS = "abcdeghiklmnopqrstuvxyđ"


def feature_extractor():
    import transformers

    return transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True)


def write_ctc_asr(folder: Path, word: str = "a") -> Path:
    """A CTC model whose output layer always prefers the letter ``word``: every clip is heard as ``word``."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "|": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    transformers.Wav2Vec2Processor(feature_extractor=feature_extractor(), tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**ENCODER, vocab_size=len(vocab), pad_token_id=0))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[vocab[word]] = 1.0
    model.save_pretrained(folder)
    return folder


WHISPER_SPECIALS = ("<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>")


def write_whisper_asr(folder: Path) -> Path:
    """A tiny Whisper-style (sequence-to-sequence) model whose decoder always prefers the token "a": every
    clip is heard as a run of "a"s."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["a", "b", "c", "Ġ", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    end = "<|endoftext|>"
    tokenizer = transformers.WhisperTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end, bos_token=end, eos_token=end
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS)})
    processor = transformers.WhisperProcessor(
        feature_extractor=transformers.WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=1,
        d_model=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_target_positions=32,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config)
    with torch.no_grad():  # constant decoder output along token "a"'s (tied) embedding, scaled up
        embed = model.model.decoder.embed_tokens.weight
        embed[vocab["a"]] = 10.0 * embed[vocab["a"]] / embed[vocab["a"]].norm()
        model.model.decoder.layer_norm.weight.zero_()
        model.model.decoder.layer_norm.bias.copy_(embed[vocab["a"]])
    model.generation_config.max_length = 8
    model.save_pretrained(folder)
    return folder
