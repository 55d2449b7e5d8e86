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
