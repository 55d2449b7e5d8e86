"""Optional model-based metrics of the held-out evaluation: ASR word error rate and speaker similarity.

Both need pretrained models that flowtts does not ship, loaded by ``flowtts.synthesis.pretrained`` (a
local folder in the Hugging Face layout, or a repo id already in the local cache; nothing is downloaded
unless the caller allows it). They are off by default.

- ASR: ``flowtts.synthesis.transcription.Transcriber`` (the one that transcribes references too): a CTC
  model decoded greedily, e.g. ``nguyenvulebinh/wav2vec2-base-vietnamese-250h``, or a Whisper-style
  model. Upstream F5-TTS scores with Whisper / Paraformer; a CTC model has no language model to fill in
  words it did not hear.
- Speaker similarity: cosine of the x-vectors of a ``WavLMForXVector``, e.g. ``microsoft/wavlm-base-plus-sv``
  (upstream uses a WavLM-large ECAPA-TDNN, so values compare only within one model).

Both hear 16 kHz audio: the mels are vocoded with the evaluation's vocoder and resampled. With the
Griffin-Lim fallback the ASR figures are pessimistic for every system alike.

Per clip they give what was heard and its edits against the text (words: Vietnamese words are syllables;
and characters), and two similarities: ``speaker_sim`` to the held-out clip's own recording, and ``sim_o``
(upstream F5-TTS's SIM-o) to the prompt the model was conditioned on. The shards keep log-mels, not wavs,
so "original" here is the prompt's mel through the same vocoder; upstream embeds the prompt wav itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchaudio

from flowtts.evaluation.metrics import error_counts
from flowtts.synthesis.pretrained import load_pretrained
from flowtts.synthesis.transcription import ASR_SAMPLE_RATE, Transcriber
from flowtts.synthesis.vocoder import Vocoder

logger = logging.getLogger(__name__)

JUDGE_SAMPLE_RATE = ASR_SAMPLE_RATE


class SpeakerJudge:
    """Cosine similarity of the x-vectors of two 16 kHz clips (1.0: the same voice print)."""

    def __init__(self, source: str | Path, *, allow_download: bool = False, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.features, self.model = load_pretrained(
            source, allow_download, self.device, "AutoFeatureExtractor", "AutoModelForAudioXVector"
        )

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """The x-vector of one clip."""
        inputs = self.features(audio.numpy(), sampling_rate=JUDGE_SAMPLE_RATE, return_tensors="pt")
        return self.model(**inputs.to(self.device)).embeddings[0].cpu()

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return cosine(self.embed(a), self.embed(b))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@dataclass
class Judges:
    """The judges asked for, and the vocoder that turns mels into the audio they hear."""

    vocoder: Vocoder
    asr: Transcriber | None = None
    speaker: SpeakerJudge | None = None
    # x-vector of each recording, by clip: every system is compared with the same recordings
    _voice_prints: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls,
        *,
        asr_model: str | None,
        speaker_model: str | None,
        vocoder: str | None,
        allow_download: bool = False,
        device: str | torch.device = "cpu",
    ) -> Judges | None:
        """None when neither model is given (the default: the evaluation stays offline and model-free)."""
        if asr_model is None and speaker_model is None:
            return None
        from flowtts.synthesis import load_vocoder

        return cls(
            vocoder=load_vocoder(vocoder, device=device),
            asr=Transcriber(asr_model, allow_download=allow_download, device=device) if asr_model else None,
            speaker=SpeakerJudge(speaker_model, allow_download=allow_download, device=device)
            if speaker_model
            else None,
        )

    def audio(self, mel: torch.Tensor) -> torch.Tensor:
        """A ``[frames, n_mels]`` log-mel as 16 kHz mono audio."""
        wave = self.vocoder.decode(mel.T.unsqueeze(0).to(torch.float32))[0].cpu()
        return torchaudio.functional.resample(wave, self.vocoder.sample_rate, JUDGE_SAMPLE_RATE)

    def score(
        self,
        clip: str,
        text: str,
        recording: torch.Tensor,
        generated: torch.Tensor,
        *,
        prompt_clip: str | None = None,
        prompt: torch.Tensor | None = None,
    ) -> dict[str, float | int | str]:
        """What the judges make of ``generated`` (a ``[frames, n_mels]`` log-mel), as ``ItemScore`` fields.
        ASR: ``transcript``, ``wer`` and its ``substitutions``, ``deletions``, ``insertions`` of the
        ``reference_words`` of ``text``, ``cer`` with ``char_errors`` of ``reference_chars``. Speaker:
        ``speaker_sim`` with the recording of ``clip``, and ``sim_o`` with the ``prompt`` mel (clip
        ``prompt_clip``) when given. Each recording is vocoded and embedded once per clip."""
        if prompt is not None and prompt_clip is None:
            raise ValueError("a prompt mel needs its clip name (prompt_clip): voice prints are kept by clip")
        heard = self.audio(generated)
        scores: dict[str, float | int | str] = {}
        if self.asr is not None:
            transcript = self.asr.transcribe(heard)
            words, chars = error_counts(text, transcript, "word"), error_counts(text, transcript, "char")
            scores |= {
                "transcript": transcript,
                "wer": words.rate,
                "substitutions": words.substitutions,
                "deletions": words.deletions,
                "insertions": words.insertions,
                "reference_words": words.reference_length,
                "cer": chars.rate,
                "char_errors": chars.errors,
                "reference_chars": chars.reference_length,
            }
            logger.debug("asr %r -> %r (wer %.2f)", text, transcript, words.rate)
        if self.speaker is not None:
            voice = self.speaker.embed(heard)
            scores["speaker_sim"] = cosine(voice, self.voice_print(clip, recording))
            if prompt is not None:
                scores["sim_o"] = cosine(voice, self.voice_print(prompt_clip, prompt))
        return scores

    def voice_print(self, clip: str, mel: torch.Tensor) -> torch.Tensor:
        """The x-vector of a recording's mel, computed once per clip name."""
        if clip not in self._voice_prints:
            self._voice_prints[clip] = self.speaker.embed(self.audio(mel))
        return self._voice_prints[clip]
