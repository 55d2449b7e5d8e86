"""Transcribing a reference clip when its transcript is empty, as upstream's ``preprocess_ref_audio_text``
does (it runs Whisper); here with any ASR model in the Hugging Face layout: a CTC model (wav2vec2 and
kin, decoded greedily) or a Whisper-style sequence-to-sequence model (``generate``).

The clip transcribed is the conditioned reference (clipped to 12 s at a pause, silence trimmed), so the
transcript matches the audio the model is prompted with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio

from flowtts.synthesis.errors import EmptyTextError
from flowtts.synthesis.pretrained import import_transformers, load_pretrained, resolve_pretrained

ASR_SAMPLE_RATE = 16000


class TranscriptRequiredError(EmptyTextError):
    """A reference has an empty transcript and no ASR model is configured to transcribe it."""


class Transcriber:
    """Speech to text with a CTC or a sequence-to-sequence (Whisper-style) model."""

    def __init__(self, source: str | Path, *, allow_download: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.source = str(source)
        config = import_transformers().AutoConfig.from_pretrained(
            resolve_pretrained(source, allow_download=allow_download)
        )
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        model_class = "AutoModelForSpeechSeq2Seq" if self.seq2seq else "AutoModelForCTC"
        self.processor, self.model = load_pretrained(source, allow_download, self.device, "AutoProcessor", model_class)

    def transcribe(self, audio: np.ndarray | torch.Tensor, sample_rate: int = ASR_SAMPLE_RATE) -> str:
        """The transcript of mono ``audio`` (any rate; resampled to 16 kHz), whitespace collapsed."""
        return self.transcribe_batch([audio], sample_rate)[0]

    @torch.no_grad()
    def transcribe_batch(
        self, audios: Sequence[np.ndarray | torch.Tensor], sample_rate: int = ASR_SAMPLE_RATE
    ) -> list[str]:
        """The transcript of each clip. Clips of equal length share one forward pass (nothing is padded, so
        each transcript is the one ``transcribe`` gives it alone): the candidates of one text chunk have
        equal lengths."""
        waves = [torch.as_tensor(audio, dtype=torch.float32).reshape(-1) for audio in audios]
        if sample_rate != ASR_SAMPLE_RATE:
            waves = [torchaudio.functional.resample(wave, sample_rate, ASR_SAMPLE_RATE) for wave in waves]
        by_length: dict[int, list[int]] = {}
        for index, wave in enumerate(waves):
            by_length.setdefault(len(wave), []).append(index)
        texts = [""] * len(waves)
        for indices in by_length.values():
            batch = [waves[i].numpy() for i in indices]
            inputs = self.processor(batch, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt")
            if self.seq2seq:
                ids = self.model.generate(inputs.input_features.to(self.device))
                decoded = self.processor.batch_decode(ids.cpu(), skip_special_tokens=True)
            else:
                logits = self.model(inputs.input_values.to(self.device)).logits
                decoded = self.processor.batch_decode(logits.argmax(-1).cpu())
            for index, text in zip(indices, decoded, strict=True):
                texts[index] = " ".join(text.split())
        return texts
