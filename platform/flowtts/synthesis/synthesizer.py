"""The synthesiser: reference voice + text in, 24 kHz speech out, with upstream F5-TTS inference behaviour.

It holds the model, vocab, vocoder and text front end and no per-request state: sampling options
travel with every call, so one object serves concurrent callers. ``synthesize`` = ``plan`` (front end,
chunks, durations, seeds) + ``generate`` (ONE batched ``CFM.sample`` for any rows, from any requests
sharing one ``SamplingSettings``) + ``render`` (vocoder, loudness, cross-fade, optional silence removal).

Rows of a batch are independent: noise is seeded per row and ``CFM.sample(isolate_items=True)`` masks
padded frames as attention keys and embeds each row's text at its own length, so a row's mel equals
its unbatched mel, which is what upstream (one chunk at a time) computes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.nn.utils.rnn import pad_sequence

from flowtts.audio import DEFAULT_MEL
from flowtts.checkpoint import CheckpointError, load_bundle, load_f5_checkpoint
from flowtts.config import MelConfig, ModelConfig, load_config, preset_names
from flowtts.model import CFM
from flowtts.model_source import ModelSource, local_model, resolve_model_source
from flowtts.synthesis.chunking import CROSS_FADE_S, cross_fade
from flowtts.synthesis.output import limit_peak
from flowtts.synthesis.planning import (
    DEFAULT_OPTIONS,
    SampleItem,
    SynthesisOptions,
    SynthesisPlan,
    plan_synthesis,
)
from flowtts.synthesis.reference import AudioInput, Reference, prepare_reference
from flowtts.synthesis.sampling import SamplingSettings
from flowtts.synthesis.silence import remove_silences
from flowtts.synthesis.vocoder import Vocoder, load_vocoder
from flowtts.text import Vocab, normalize_vietnamese, pad_token_ids


@dataclass
class SynthesisResult:
    audio: np.ndarray  # [samples] float32, peak at most PEAK_LIMIT
    seed: int
    duration_rule: str
    chunks: list[str]
    mel: torch.Tensor  # [frames, n_mels] generated mel of all chunks, concatenated (CPU)
    sample_rate: int = 24000

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


class Synthesizer:
    def __init__(
        self,
        model: CFM,
        vocab: Vocab,
        vocoder: Vocoder,
        *,
        frontend: Callable[[str], str] = normalize_vietnamese,
        mel: MelConfig = DEFAULT_MEL,
        model_info: dict[str, Any] | None = None,
        unknown_characters: Literal["error", "space"] = "error",
    ):
        """``unknown_characters="space"`` maps characters missing from the vocab to the space id, as
        upstream does silently; the default raises ``UnknownCharactersError`` naming them."""
        if len(vocab) != model.config.text_num_embeds:
            raise CheckpointError(
                f"vocab has {len(vocab)} tokens but the model expects {model.config.text_num_embeds} (text_num_embeds)"
            )
        if vocoder.sample_rate != mel.target_sample_rate:
            raise ValueError(
                f"vocoder sample rate {vocoder.sample_rate} differs from the mel's {mel.target_sample_rate}"
            )
        self.model = model
        self.vocab = vocab
        self.vocoder = vocoder
        self.frontend = frontend
        self.mel = mel
        self.model_info = dict(model_info or {})
        self.unknown_characters = unknown_characters

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | ModelSource,
        *,
        vocab: str | Path | None = None,
        model_config: str | Path | dict | None = None,
        vocoder: str | Path | None = None,
        device: str = "cpu",
        allow_download: bool = False,
        frontend: Callable[[str], str] = normalize_vietnamese,
        unknown_characters: Literal["error", "space"] = "error",
    ) -> Synthesizer:
        """Load from anything ``flowtts.model_source`` accepts: a folder in our format, an MLflow model or
        run URI (an alias is pinned here), an official ``.pt``/``.safetensors``, or a ``ModelSource``.

        An official file needs ``vocab`` (its ``vocab.txt``; the one beside the file by default) and
        ``model_config`` (a JSON like the fixtures' ``config.json``, a YAML config, a preset name, or a
        dict). ``vocoder`` is a Vocos folder or a cached Hugging Face repo id; ``None`` means Griffin-Lim
        (see ``load_vocoder``).
        """
        pinned = resolve_model_source(source)
        with local_model(pinned) as path:  # a downloaded model is removed once it is in memory
            model, model_vocab, mel, info = _load_model(pinned, path, vocab, model_config)
        return cls(
            model.to(device),
            model_vocab,
            load_vocoder(vocoder, allow_download=allow_download, mel=mel, device=device),
            frontend=frontend,
            mel=mel,
            model_info=info,
            unknown_characters=unknown_characters,
        )

    # ------------------------------------------------------------ the three stages

    def prepare_reference(self, audio: AudioInput, text: str, sample_rate: int | None = None) -> Reference:
        """Raises ReferenceAudioError (not audio, under 0.3 s after trimming), EmptyTextError or
        UnspeakableTextError (transcript), UnknownCharactersError (characters missing from the vocab)."""
        return prepare_reference(
            audio,
            text,
            sample_rate,
            vocab=self.vocab,
            frontend=self.frontend,
            mel=self.mel,
            unknown=self.unknown_characters,
        )

    def plan(self, text: str, reference: Reference, options: SynthesisOptions = DEFAULT_OPTIONS) -> SynthesisPlan:
        """Front end, chunks, per-chunk durations and seeds (chunk i uses seed + i)."""
        return plan_synthesis(
            text,
            reference,
            options,
            vocab=self.vocab,
            frontend=self.frontend,
            mel=self.mel,
            unknown=self.unknown_characters,
            predictor=self.model.duration_predictor,
        )

    def generate(self, items: list[SampleItem], sampling: SamplingSettings) -> list[torch.Tensor]:
        """One ``CFM.sample`` call for all rows; each row's generated mel ``[frames, n_mels]``, prompt cut."""
        if not items:
            return []
        device = self.model.device
        cond = pad_sequence([item.cond for item in items], batch_first=True).to(device)  # [b, n_ref, mel]
        lens = torch.tensor([item.cond.shape[0] for item in items], device=device)
        text = pad_token_ids([item.text_ids for item in items]).to(device)  # [b, nt]
        duration = torch.tensor([item.total_frames for item in items], device=device)
        result = self.model.sample(
            cond=cond,
            text=text,
            duration=duration,
            lens=lens,
            steps=sampling.nfe,
            cfg_strength=sampling.cfg_strength,
            sway_sampling_coef=sampling.sway_sampling_coef,
            seed=[item.seed for item in items],
            use_epss=sampling.use_epss,
            isolate_items=True,
        )
        return [
            result.mel[row, item.prompt_frames : int(result.duration[row])].float() for row, item in enumerate(items)
        ]

    def render(self, plan: SynthesisPlan, mels: list[torch.Tensor]) -> SynthesisResult:
        """Vocoder (equal lengths batched), RMS scale back, 0.15 s cross-fade, silence removal, peak limit."""
        if len(mels) != len(plan.items):
            raise ValueError(f"got {len(mels)} mels for a plan of {len(plan.items)} chunks")
        waves = [wave * plan.reference.rms_scale for wave in self.vocode(mels)]
        audio = cross_fade(waves, self.mel.target_sample_rate, CROSS_FADE_S)
        if plan.options.remove_silence:
            audio = remove_silences(audio, self.mel.target_sample_rate)
        return SynthesisResult(
            audio=limit_peak(audio),
            seed=plan.seed,
            duration_rule=plan.duration_rule,
            chunks=list(plan.chunks),
            mel=torch.cat([m.cpu() for m in mels]),
            sample_rate=self.mel.target_sample_rate,
        )

    def synthesize(
        self, text: str, reference: Reference, options: SynthesisOptions = DEFAULT_OPTIONS
    ) -> SynthesisResult:
        plan = self.plan(text, reference, options)
        return self.render(plan, self.generate(plan.items, options.sampling))

    def vocode(self, mels: list[torch.Tensor]) -> list[np.ndarray]:
        """Each ``[frames, n_mels]`` mel to float32 audio; mels of equal length share one decode call."""
        waves: list[np.ndarray | None] = [None] * len(mels)
        by_length: dict[int, list[int]] = {}
        for index, mel in enumerate(mels):
            by_length.setdefault(mel.shape[0], []).append(index)
        for indices in by_length.values():
            batch = torch.stack([mels[i].T for i in indices])  # [b, n_mels, frames]
            decoded = self.vocoder.decode(batch).float().cpu().numpy()  # [b, samples]
            for row, index in enumerate(indices):
                waves[index] = decoded[row]
        return waves


# ---------------------------------------------------------------- loading


def _load_model(
    source: ModelSource, path: Path, vocab: str | Path | None, model_config: str | Path | dict | None
) -> tuple[CFM, Vocab, MelConfig, dict[str, Any]]:
    """The model at ``path`` (the local copy of ``source``)."""
    if source.kind != "official":
        bundle = load_bundle(path)
        model_vocab = Vocab.load(vocab) if vocab is not None else bundle.vocab
        if model_vocab is None:
            raise CheckpointError(f"{path} has no vocab.txt; pass vocab=")
        return bundle.model, model_vocab, bundle.mel, {**bundle.info, "source": source.uri}
    vocab = vocab if vocab is not None else source.vocab
    if vocab is None or model_config is None:
        raise CheckpointError(
            f"official checkpoint {path} needs vocab= (its vocab.txt, found beside it when present) and "
            "model_config= (a JSON like config.json, a YAML config or a preset name)"
        )
    official_vocab = Vocab.load(vocab)
    config = read_model_config(model_config).with_vocab_size(len(official_vocab))
    model = load_f5_checkpoint(path, config)
    return model, official_vocab, MelConfig(), {"source": source.uri, "format": "f5-tts"}


def read_model_config(spec: str | Path | dict) -> ModelConfig:
    """A model config from a dict, a JSON/YAML file (ours, upstream's ``model.arch`` layout, or a flat
    ``config.json``) or a preset name."""
    if isinstance(spec, dict):
        return ModelConfig.from_upstream(spec)
    path = Path(spec)
    if not path.is_file():
        if str(spec) in preset_names():
            return load_config(str(spec)).model
        raise FileNotFoundError(
            f"model config {str(spec)!r} is neither a file nor a preset ({', '.join(preset_names())})"
        )
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    section = data.get("model", data) if isinstance(data, dict) else data
    if isinstance(section, dict) and "arch" in section:  # upstream YAML: model: {backbone, arch: {...}}
        section = {**section["arch"], "backbone": section.get("backbone", "DiT")}
    if not isinstance(section, dict):
        raise CheckpointError(f"model config {path} does not hold a mapping of model settings")
    return ModelConfig.from_upstream(section)
