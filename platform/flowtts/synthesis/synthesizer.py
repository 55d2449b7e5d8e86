"""The synthesiser: reference voice + text in, 24 kHz speech out, with upstream F5-TTS inference behaviour.

It holds the model, vocab, vocoder and text front end and no per-request state: sampling options
travel with every call, so one object serves concurrent callers. ``synthesize`` = ``plan`` (front end,
chunks, durations, seeds) + ``generate`` (ONE batched ``CFM.sample`` for any rows, from any requests
sharing one ``SamplingSettings``) + ``render`` (vocoder, loudness, cross-fade, optional silence removal).
``plan_voices``/``render_voices`` do the same for a text with ``[name]`` voice tags, segment by segment.
``edit`` = ``plan_edit`` + ``generate`` + ``render_edit`` (``flowtts.synthesis.editing``); an edit's row
batches with synthesis rows. Best of N (``SynthesisOptions.candidates``, ``flowtts.synthesis.candidates``):
``plan`` + ``generate`` of ``candidate_items`` (the N candidates of every chunk in the same call) + ``rerank``
(vocoder, the judges, ``flowtts.evaluation.reranking``) + ``render`` of the chosen ones.

Rows of a batch are independent: noise is seeded per row and ``CFM.sample(isolate_items=True)`` masks
padded frames as attention keys and embeds each row's text at its own length, so a row's mel equals
its unbatched mel, which is what upstream (one chunk at a time) computes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from flowtts.audio import DEFAULT_MEL
from flowtts.checkpoint import CheckpointError
from flowtts.config import MelConfig
from flowtts.inference import SamplingBackend, make_backend
from flowtts.model import CFM
from flowtts.model_loading import ModelConfigSpec, load_model
from flowtts.model_source import ModelSource, local_model, resolve_model_source
from flowtts.synthesis.candidates import (
    CandidateJudges,
    ChunkChoice,
    Reranked,
    candidate_items,
    choose_chunk,
    rerank,
)
from flowtts.synthesis.chunking import cross_fade
from flowtts.synthesis.editing import EditPlan, EditResult, plan_edit, splice_edit
from flowtts.synthesis.errors import JudgeRequiredError
from flowtts.synthesis.multivoice import VoicedPlan, plan_voices
from flowtts.synthesis.output import limit_peak
from flowtts.synthesis.planning import (
    DEFAULT_OPTIONS,
    SampleItem,
    SynthesisOptions,
    SynthesisPlan,
    plan_synthesis,
)
from flowtts.synthesis.reference import (
    TARGET_RMS,
    AudioInput,
    Reference,
    condition_audio,
    load_reference_audio,
    prepare_reference,
)
from flowtts.synthesis.sampling import SamplingSettings
from flowtts.synthesis.silence import remove_silences
from flowtts.synthesis.transcription import Transcriber, TranscriptRequiredError
from flowtts.synthesis.vocoder import Vocoder, load_vocoder
from flowtts.text import TextFrontend, Vocab, pad_token_ids

logger = logging.getLogger(__name__)


@dataclass
class SynthesisResult:
    audio: np.ndarray  # [samples] float32, peak at most PEAK_LIMIT
    seed: int
    duration_rule: str
    chunks: list[str]
    mel: torch.Tensor  # [frames, n_mels] generated mel of all chunks, concatenated (CPU)
    sample_rate: int = 24000
    candidates: int = 1  # candidates sampled per chunk
    choices: list[ChunkChoice] = field(default_factory=list)  # per chunk, with candidates > 1: scores, kept one

    @property
    def chosen_seeds(self) -> list[int]:
        """The seed of the candidate kept for each chunk (empty without candidates)."""
        return [choice.seed for choice in self.choices]

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
        frontend: Callable[[str], str] | None = None,
        mel: MelConfig = DEFAULT_MEL,
        model_info: dict[str, Any] | None = None,
        unknown_characters: Literal["error", "space"] = "error",
        transcriber: Transcriber | None = None,
        backend: SamplingBackend | None = None,
        judges: CandidateJudges | None = None,
    ):
        """``frontend`` reads every text (default: the one ``model_info`` records, see
        ``TextFrontend.of_model``). ``unknown_characters="space"`` maps characters missing from the vocab
        to the space id, as upstream does silently; the default raises ``UnknownCharactersError``.
        ``transcriber`` transcribes references given with an empty transcript. ``backend`` (from
        ``flowtts.inference.make_backend``) evaluates the sampling steps; ``None`` is eager. ``judges``
        choose among candidates (``SynthesisOptions.candidates`` > 1); may also be set after loading."""
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
        self.frontend = frontend if frontend is not None else TextFrontend.of_model(model_info or {}, vocab)
        self.mel = mel
        self.model_info = dict(model_info or {})
        self.unknown_characters = unknown_characters
        self.transcriber = transcriber
        self.backend = backend
        self.judges = judges

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | ModelSource,
        *,
        vocab: str | Path | None = None,
        model_config: ModelConfigSpec | None = None,
        text_frontend: TextFrontend | None = None,
        vocoder: str | Path | None = None,
        device: str = "cpu",
        allow_download: bool = False,
        unknown_characters: Literal["error", "space"] = "error",
        asr_model: str | Path | None = None,
        backend: str = "eager",
        onnx_file: str | Path | None = None,
    ) -> Synthesizer:
        """Load from anything ``flowtts.model_source`` accepts: a folder in our format, an MLflow model or
        run URI (an alias is pinned here), an official ``.pt``/``.safetensors`` (a folder or file: a path or a
        URI such as ``s3://bucket/ckpt``), or a ``ModelSource``.

        An official file takes ``vocab`` (default: the ``vocab.txt`` beside it), ``model_config`` (a JSON
        like the fixtures' ``config.json``, a YAML config of ours or upstream's, a preset name, or a dict;
        default ``F5TTS_v1_Base``) and ``text_frontend`` (see ``flowtts.model_loading``); for a model of
        ours ``text_frontend`` replaces the recorded one. ``vocoder`` is a Vocos folder (path or URI) or a cached
        Hugging Face repo id; ``None`` means Griffin-Lim (see ``load_vocoder``). ``asr_model`` (a CTC or
        Whisper-style model folder or cached repo id) transcribes references given without a transcript.
        ``backend`` (``eager``, ``compiled``, ``onnxruntime``; ``onnx_file``: a step from ``jobs/export.py``)
        is built and warmed up here, so compiling or exporting never falls inside a later call.
        """
        pinned = resolve_model_source(source)
        with local_model(pinned) as path:  # a downloaded model is removed once it is in memory
            bundle = load_model(pinned, path, vocab=vocab, model_config=model_config, text_frontend=text_frontend)
        model = bundle.model.to(device)
        sampler = make_backend(backend, model, onnx_file=onnx_file)
        if sampler is not None:
            logger.info("%s backend ready in %.1f s (warm-up)", backend, sampler.warm_up())
        return cls(
            model,
            bundle.vocab,
            load_vocoder(vocoder, allow_download=allow_download, mel=bundle.mel, device=device),
            mel=bundle.mel,
            model_info=bundle.info,
            unknown_characters=unknown_characters,
            transcriber=Transcriber(asr_model, allow_download=allow_download, device=device) if asr_model else None,
            backend=sampler,
        )

    # ------------------------------------------------------------ the three stages

    def prepare_reference(
        self, audio: AudioInput, text: str, sample_rate: int | None = None, *, target_rms: float = TARGET_RMS
    ) -> Reference:
        """Raises ReferenceAudioError (not audio, under 0.3 s after trimming), EmptyTextError or
        UnspeakableTextError (transcript), UnknownCharactersError (characters missing from the vocab),
        InvalidOptionsError (``target_rms`` outside (0, 1]: the RMS a quieter reference is raised to).
        An empty ``text`` is transcribed by the ASR model (``Reference.transcript`` holds what it heard);
        without one it raises TranscriptRequiredError."""
        if not text or not text.strip():
            rate = self.mel.target_sample_rate
            audio, sample_rate = load_reference_audio(audio, sample_rate, rate), rate
            text = self.transcribe(audio)
        return prepare_reference(
            audio,
            text,
            sample_rate,
            vocab=self.vocab,
            frontend=self.frontend,
            mel=self.mel,
            unknown=self.unknown_characters,
            target_rms=target_rms,
        )

    def transcribe(self, audio: np.ndarray) -> str:
        """What the ASR model hears in a reference (float32 mono at the model's rate), conditioned as a
        reference is (clipped, trimmed), so the transcript matches the prompt audio."""
        if self.transcriber is None:
            raise TranscriptRequiredError(
                "the reference text (its transcript) is empty and no ASR model is configured to transcribe it "
                "(asr_model / --asr-model); give the transcript"
            )
        rate = self.mel.target_sample_rate
        heard = self.transcriber.transcribe(condition_audio(audio, rate)[0], rate)
        if not heard:
            raise TranscriptRequiredError(f"the ASR model {self.transcriber.source} heard no words in the reference")
        return heard

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
        edit_mask = None
        if any(item.keep is not None for item in items):  # [b, n_ref]; rows without one keep all of cond
            keep = [
                item.keep if item.keep is not None else torch.ones(len(item.cond), dtype=torch.bool) for item in items
            ]
            edit_mask = pad_sequence(keep, batch_first=True).to(device)
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
            ode_method=sampling.ode_method,
            edit_mask=edit_mask,
            backend=self.backend,
        )
        return [
            result.mel[row, item.prompt_frames : int(result.duration[row])].float() for row, item in enumerate(items)
        ]

    def render(
        self, plan: SynthesisPlan, mels: list[torch.Tensor], waves: list[np.ndarray] | None = None
    ) -> SynthesisResult:
        """Vocoder (equal lengths batched; ``waves``: already vocoded), RMS scale back, cross-fade, silence
        removal, peak limit."""
        if len(mels) != len(plan.items):
            raise ValueError(f"got {len(mels)} mels for a plan of {len(plan.items)} chunks")
        waves = [wave * plan.reference.rms_scale for wave in (self.vocode(mels) if waves is None else waves)]
        audio = cross_fade(waves, self.mel.target_sample_rate, plan.options.cross_fade_duration)
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

    def plan_voices(
        self,
        text: str,
        reference: Reference | None,
        options: SynthesisOptions = DEFAULT_OPTIONS,
        voices: Mapping[str, Reference] | None = None,
    ) -> VoicedPlan:
        """``plan`` for a text with ``[name]`` voice tags (see ``flowtts.synthesis.multivoice``): one
        ``SynthesisPlan`` per segment, ``voices`` giving the reference of each tag's name. Raises
        JudgeRequiredError for ``options.candidates`` > 1 without ``judges``."""
        if options.candidates > 1 and self.judges is None:
            raise JudgeRequiredError(
                f"candidates={options.candidates} needs an ASR judge to choose among the candidates, and none is "
                "loaded; ask for one candidate or load a judge"
            )
        return plan_voices(text, reference, options, voices or {}, self.plan)

    def render_voices(
        self, plan: VoicedPlan, mels: list[torch.Tensor], waves: list[np.ndarray] | None = None
    ) -> SynthesisResult:
        """``render`` each segment, then join the segments with the chunks' cross-fade."""
        if len(mels) != len(plan.items):
            raise ValueError(f"got {len(mels)} mels for a plan of {len(plan.items)} chunks")
        results, start = [], 0
        for segment in plan.segments:
            end = start + len(segment.items)
            results.append(self.render(segment, mels[start:end], None if waves is None else waves[start:end]))
            start = end
        if len(results) == 1:
            return results[0]
        return SynthesisResult(
            audio=cross_fade(
                [r.audio for r in results], self.mel.target_sample_rate, plan.segments[0].options.cross_fade_duration
            ),
            seed=plan.seed,
            duration_rule=plan.duration_rule,
            chunks=[chunk for r in results for chunk in r.chunks],
            mel=torch.cat([r.mel for r in results]),
            sample_rate=self.mel.target_sample_rate,
        )

    def synthesize(
        self,
        text: str,
        reference: Reference | None,
        options: SynthesisOptions = DEFAULT_OPTIONS,
        voices: Mapping[str, Reference] | None = None,
    ) -> SynthesisResult:
        """Speak ``text``; ``[name]`` tags switch to ``voices[name]``, all chunks (and all their candidates)
        sampled in one call."""
        plan = self.plan_voices(text, reference, options, voices)
        return self.render_best(plan, self.generate(candidate_items(plan.items, options.candidates), options.sampling))

    # ------------------------------------------------------------ best of N

    def render_best(self, plan: VoicedPlan, mels: list[torch.Tensor]) -> SynthesisResult:
        """``render_voices`` of each chunk's best candidate; ``mels`` of ``candidate_items(plan.items, N)``
        (N = 1: the plan's own rows, rendered as they are)."""
        candidates = len(mels) // max(len(plan.items), 1)
        if candidates <= 1:
            return self.render_voices(plan, mels)
        ranked = self.rerank(plan, mels)
        result = self.render_voices(plan, ranked.mels, ranked.waves)
        return replace(result, candidates=candidates, choices=ranked.choices)

    def rerank(self, plan: VoicedPlan, mels: list[torch.Tensor]) -> Reranked:
        """``mels`` of ``candidate_items(plan.items, N)`` -> each chunk's chosen mel and wave, and the scores."""
        return rerank(plan, mels, self._judges(), self.vocode, self.mel.target_sample_rate)

    def choose_chunk(
        self, plan: VoicedPlan, index: int, mels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, np.ndarray, ChunkChoice]:
        """Chunk ``index``'s candidates (mels in candidate order) vocoded and judged: the chosen mel, its wave
        (before the reference's RMS scale) and the choice; a stream chooses chunk by chunk."""
        return choose_chunk(plan, index, mels, self._judges(), self.vocode, self.mel.target_sample_rate)

    def _judges(self) -> CandidateJudges:
        if self.judges is None:
            raise JudgeRequiredError("choosing among candidates needs an ASR judge, and none is loaded")
        return self.judges

    # ------------------------------------------------------------ speech editing

    def plan_edit(
        self,
        audio: AudioInput,
        text: str,
        new_text: str,
        spans: list[tuple[float, float]],
        *,
        durations: list[float] | None = None,
        sample_rate: int | None = None,
        seed: int | None = None,
        target_rms: float = TARGET_RMS,
    ) -> EditPlan:
        """Raises InvalidEditError (spans, durations), the reference errors for the audio and the texts."""
        return plan_edit(
            audio,
            text,
            new_text,
            spans,
            durations=durations,
            sample_rate=sample_rate,
            seed=seed,
            target_rms=target_rms,
            vocab=self.vocab,
            frontend=self.frontend,
            mel=self.mel,
            unknown=self.unknown_characters,
        )

    def render_edit(self, plan: EditPlan, mel: torch.Tensor) -> EditResult:
        (wave,) = self.vocode([mel])
        return splice_edit(plan, wave, self.mel)

    def edit(
        self,
        audio: AudioInput,
        text: str,
        new_text: str,
        spans: list[tuple[float, float]],
        *,
        durations: list[float] | None = None,
        sample_rate: int | None = None,
        sampling: SamplingSettings = DEFAULT_OPTIONS.sampling,
        seed: int | None = None,
        target_rms: float = TARGET_RMS,
    ) -> EditResult:
        """Regenerate ``spans`` (seconds) of ``audio``, whose transcript is ``text``, so that it says
        ``new_text``; outside the spans the result is ``audio`` itself (at the mel's rate)."""
        plan = self.plan_edit(
            audio, text, new_text, spans, durations=durations, sample_rate=sample_rate, seed=seed, target_rms=target_rms
        )
        (mel,) = self.generate([plan.item], sampling)
        return self.render_edit(plan, mel)

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
