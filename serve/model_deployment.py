"""The model deployment: ``TTSModel`` holds the synthesiser and batches requests with ``@serve.batch``.

On the replica the reference is prepared (or found in the per-replica LRU), the text planned into
chunks, and the chunks' sampler rows are handed to ``generate_batched``: ``@serve.batch`` gathers the
rows of concurrent requests, and ``plan_generate_calls`` turns them into as few ``Synthesizer.generate``
calls as the frame cap allows, one ``SamplingSettings`` per call. Sampling runs in a worker thread so
the replica's event loop keeps answering health checks.

Best of N (``candidates`` > 1): the N candidates of every chunk (``candidate_items``) are one request's rows
of that batch, so they share its ``generate`` calls; the judges (``settings.judges``, loaded and warmed up
with the model) score them and each chunk keeps its best (``Synthesizer.render_best``). A stream samples and
chooses chunk by chunk, then sends the chosen chunk.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import soundfile as sf
import torch
from ray import serve

from flowtts.evaluation.judges import SpeakerJudge
from flowtts.model_source import ModelSource
from flowtts.synthesis import (
    CandidateJudges,
    ReferenceAudioError,
    SamplingSettings,
    SynthesisOptions,
    Synthesizer,
    Transcriber,
    candidate_items,
)
from flowtts.synthesis.batching import GenerateWork, plan_generate_calls
from flowtts.usage_reporting import usage_reporting_off
from flowtts.voices import VoiceStore
from serve.messages import (
    CLIENT_EXCEPTIONS,
    SAMPLE_RATE,
    ClientError,
    EditJob,
    ModelConfigSummary,
    ModelDescription,
    ReferenceSpec,
    ReplicaHealth,
    StreamStart,
    SynthesisJob,
    SynthesisReply,
    client_error,
)
from serve.references import LRUCache
from serve.settings import BatchingSettings, ServeSettings
from serve.streaming import CrossFadeJoiner
from serve.telemetry import ModelMetrics

logger = logging.getLogger("ray.serve")

WARMUP_SAMPLING = SamplingSettings(nfe=2)  # the warm-up and health probe: as cheap as sampling gets
BATCH_LOG_LENGTH = 1000


def load_synthesizer(settings: ServeSettings, source: ModelSource) -> Synthesizer:
    """The default loader: the pinned source (a registry model is downloaded into a temporary folder that is
    removed once the weights are in memory; replicas come and go with autoscaling)."""
    return Synthesizer.from_pretrained(
        source,
        vocab=settings.vocab,
        model_config=settings.model_arch,
        text_frontend=settings.text_frontend,
        vocoder=settings.vocoder,
        device=settings.device,
        asr_model=settings.asr_model,
        backend=settings.backend,
        onnx_file=settings.onnx_file,
    )


def load_judges(settings: ServeSettings, synth: Synthesizer) -> CandidateJudges | None:
    """The re-ranking judges of ``settings.judges`` (None without an ASR judge); the reference transcriber is the
    ASR judge too when both name the same model on the same device. Never downloads."""
    judges = settings.judges
    if judges.asr_model is None:
        return None
    device = judges.device or settings.device
    same = judges.asr_model == settings.asr_model and device == settings.device
    asr = synth.transcriber if same and synth.transcriber is not None else Transcriber(judges.asr_model, device=device)
    speaker = SpeakerJudge(judges.speaker_model, device=device) if judges.speaker_model else None
    return CandidateJudges(asr=asr, speaker=speaker)


@serve.deployment  # its options: serve.settings.MODEL_DEPLOYMENT, applied by serve.app
class TTSModel:
    def __init__(
        self,
        settings: ServeSettings,
        source: ModelSource,
        loader: Callable[[ServeSettings, ModelSource], Synthesizer] | None = None,
    ):
        usage_reporting_off()  # before MLflow loads the model, whatever the replica's runtime_env says
        self.settings = settings
        self.source = source
        self.version = source.label
        self.synth = (loader or load_synthesizer)(settings, source)
        self.synth.judges = load_judges(settings, self.synth)
        self.voices = VoiceStore(settings.voices_uri)
        self.references: LRUCache = LRUCache(settings.reference_cache_size)
        self.reconfigure({})  # sets self.batching; Serve calls it again with the deployment's user_config
        self.batch_log: deque[dict] = deque(maxlen=BATCH_LOG_LENGTH)
        self.metrics = ModelMetrics()
        self.needs_probe = False
        self.probe_items = self._warm_up() if settings.warmup else None
        logger.info("TTSModel ready: %s from %s", self.version, source.load_uri)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config`` = BatchingSettings fields over the settings' own; applied at start and on every
        config update. The applied values are kept here: they are what ``get_stats`` reports."""
        self.batching = BatchingSettings.model_validate({**self.settings.batching.model_dump(), **(user_config or {})})
        self.generate_batched.set_max_batch_size(self.batching.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)

    # ------------------------------------------------------------ health

    def _warm_up(self) -> list:
        """A tiny synthesis from a synthetic reference, of two candidates judged when there are judges; raises
        (the replica fails) if the model or a judge cannot run."""
        letters = [t for t in self.synth.vocab.tokens if len(t) == 1 and t.isalpha()][:6] or ["a"]
        text = "".join(letters)
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
        reference = self.synth.prepare_reference(tone, text, SAMPLE_RATE)
        candidates = 1 if self.synth.judges is None else 2
        options = SynthesisOptions(sampling=WARMUP_SAMPLING, seed=0, candidates=candidates)
        plan = self.synth.plan_voices(text, reference, options)
        mels = self.synth.generate(candidate_items(plan.items, candidates), WARMUP_SAMPLING)
        if candidates > 1:
            self.synth.rerank(plan, mels)
        return plan.items

    async def check_health(self) -> None:
        """Serve's periodic check: after an unexpected sampling failure, the model must run a probe."""
        if self.needs_probe and self.probe_items is not None:
            await asyncio.to_thread(self.synth.generate, self.probe_items, WARMUP_SAMPLING)
            self.needs_probe = False

    async def health(self) -> ReplicaHealth:
        await self.check_health()
        return ReplicaHealth(model_version=self.version)

    def describe(self) -> ModelDescription:
        config = self.synth.model.config
        return ModelDescription(
            name=self.source.name,
            version=self.source.version,
            alias=self.source.alias,
            uri=self.source.uri,
            run_id=self.source.run_id,
            model_version=self.version,
            config=ModelConfigSummary(
                backbone=config.backbone,
                dim=config.dim,
                depth=config.depth,
                heads=config.heads,
                parameters=sum(p.numel() for p in self.synth.model.parameters()),
                vocab_size=len(self.synth.vocab),
                text_frontend=self.synth.model_info.get("text_frontend"),
                asr_model=self.settings.asr_model,
                judges=None if self.synth.judges is None else self._judge_names(),
                sample_rate=self.synth.mel.target_sample_rate,
                vocoder=type(self.synth.vocoder).__name__,
                device=self.settings.device,
                backend=self.settings.backend,
                torch_threads=torch.get_num_threads(),
            ),
        )

    def _judge_names(self) -> dict:
        judges = self.settings.judges
        return {
            "asr_model": judges.asr_model,
            "speaker_model": judges.speaker_model,
            "device": judges.device or self.settings.device,
            "max_candidates": self.settings.limits.max_candidates,
        }

    def get_stats(self) -> dict:
        return {
            "pid": os.getpid(),
            "batches": list(self.batch_log),
            "max_batch_size": self.batching.max_batch_size,
            "batch_wait_timeout_s": self.batching.batch_wait_timeout_s,
            "max_batch_frames": self.batching.max_batch_frames,
            "reference_cache": {
                "size": len(self.references),
                "hits": self.references.hits,
                "misses": self.references.misses,
            },
        }

    # ------------------------------------------------------------ batched sampling

    @serve.batch  # sized by reconfigure (settings.batching, then the deployment's user_config)
    async def generate_batched(self, works: list[GenerateWork]) -> list[list[torch.Tensor] | Exception]:
        """One request's rows in, its mels out; concurrent requests share ``generate`` calls."""
        calls = plan_generate_calls(works, self.batching.max_batch_frames)
        mels: list[list[Any]] = [[None] * len(work.items) for work in works]
        failures: dict[int, Exception] = {}
        for call in calls:
            self.metrics.batch_rows.observe(len(call.items), tags={})
            try:
                outputs = await asyncio.to_thread(self.synth.generate, call.items, call.sampling)
            except Exception as exc:  # one failing call must not fail the other requests of the batch
                logger.exception("generate failed for %d rows", len(call.items))
                self.needs_probe = True
                for work_index, _ in call.slots:
                    failures[work_index] = exc
                continue
            for (work_index, item_index), mel in zip(call.slots, outputs, strict=True):
                mels[work_index][item_index] = mel
        self.batch_log.append(
            {
                "requests": len(works),
                "calls": [
                    {
                        "requests": c.request_count,
                        "items": len(c.items),
                        "padded_frames": c.padded_frames,
                        "nfe": c.sampling.nfe,
                        "ode_method": c.sampling.ode_method,
                    }
                    for c in calls
                ],
            }
        )
        return [failures.get(index, row) for index, row in enumerate(mels)]

    async def _generate(self, items: list, sampling: SamplingSettings) -> list[torch.Tensor]:
        self.metrics.enter()
        try:
            result = await self.generate_batched(GenerateWork(tuple(items), sampling))
        finally:
            self.metrics.leave()
        if isinstance(result, Exception):
            raise result
        return result

    # ------------------------------------------------------------ requests

    async def _reference(self, spec: ReferenceSpec):
        key = f"{spec.key}@{spec.target_rms}"
        reference = self.references.get(key)
        self.metrics.cache_lookup(hit=reference is not None)
        if reference is None:
            reference = await asyncio.to_thread(self._prepare_reference, spec)
            self.references.put(key, reference)
        return reference

    def _prepare_reference(self, spec: ReferenceSpec):
        audio = spec.audio
        if audio is None:
            voice = self.voices.get(spec.voice_id)
            audio, rate = sf.read(io.BytesIO(self.voices.read_audio(voice)), dtype="float32")
            if rate != SAMPLE_RATE:
                raise ReferenceAudioError(f"stored voice {voice.id} has rate {rate}, expected {SAMPLE_RATE}")
        return self.synth.prepare_reference(audio, spec.text, SAMPLE_RATE, target_rms=spec.target_rms)

    async def _plan(self, job: SynthesisJob):
        reference = await self._reference(job.reference)
        voices = {name: await self._reference(spec) for name, spec in job.voices}
        plan = await asyncio.to_thread(self.synth.plan_voices, job.text, reference, job.options, voices)
        return plan, (reference.transcript if not job.reference.text.strip() else None)

    async def check_reference(self, spec: ReferenceSpec) -> str | ClientError:
        """Prepare (and cache) a reference: its transcript (as given, or as the ASR model heard it), or a
        ClientError saying why it cannot be used."""
        try:
            return (await self._reference(spec)).transcript
        except CLIENT_EXCEPTIONS as exc:
            return client_error(exc)

    async def synthesize(self, job: SynthesisJob) -> SynthesisReply | ClientError:
        started = time.monotonic()
        try:
            plan, heard = await self._plan(job)
        except CLIENT_EXCEPTIONS as exc:
            return client_error(exc)
        mels = await self._generate(candidate_items(plan.items, job.options.candidates), job.options.sampling)
        result = await asyncio.to_thread(self.synth.render_best, plan, mels)
        self.metrics.synthesized(started, len(result.audio), result.sample_rate)
        return SynthesisReply(
            audio=result.audio,
            seed=result.seed,
            duration_rule=result.duration_rule,
            chunks=len(result.chunks),
            sample_rate=result.sample_rate,
            model_version=self.version,
            ref_text=heard,
            candidates=result.candidates,
            choices=tuple(result.choices),
        )

    async def edit(self, job: EditJob) -> SynthesisReply | ClientError:
        """A speech edit; its sampler row batches with the synthesis rows of other requests."""
        started = time.monotonic()
        try:
            plan = await asyncio.to_thread(
                self.synth.plan_edit,
                job.audio,
                job.text,
                job.new_text,
                job.spans,
                durations=job.durations,
                sample_rate=SAMPLE_RATE,
                seed=job.seed,
                target_rms=job.target_rms,
            )
        except CLIENT_EXCEPTIONS as exc:
            return client_error(exc)
        (mel,) = await self._generate([plan.item], job.sampling)
        result = await asyncio.to_thread(self.synth.render_edit, plan, mel)
        self.metrics.synthesized(started, len(result.audio), result.sample_rate)
        return SynthesisReply(
            audio=result.audio,
            seed=result.seed,
            duration_rule=result.duration_rule,
            chunks=1,
            sample_rate=result.sample_rate,
            model_version=self.version,
            edited_spans=tuple(result.spans),
        )

    async def synthesize_stream(self, job: SynthesisJob) -> AsyncIterator[StreamStart | ClientError | np.ndarray]:
        """A StreamStart (or a ClientError, then nothing), then each chunk's audio as soon as it is ready;
        with ``remove_silence`` (which needs the whole audio) everything comes at the end, in one piece."""
        started = time.monotonic()
        try:
            plan, heard = await self._plan(job)
        except CLIENT_EXCEPTIONS as exc:
            yield client_error(exc)
            return
        yield StreamStart(
            seed=plan.seed,
            duration_rule=plan.duration_rule,
            chunks=len(plan.items),
            sample_rate=self.synth.mel.target_sample_rate,
            model_version=self.version,
            ref_text=heard,
            candidates=job.options.candidates,
        )
        candidates = job.options.candidates
        if job.options.remove_silence:
            mels = await self._generate(candidate_items(plan.items, candidates), job.options.sampling)
            audio = (await asyncio.to_thread(self.synth.render_best, plan, mels)).audio
            self.metrics.synthesized(started, len(audio), self.synth.mel.target_sample_rate)
            yield audio
            return
        joiner = CrossFadeJoiner(self.synth.mel.target_sample_rate, job.options.cross_fade_duration)
        samples = 0
        rows, chunks = candidate_items(plan.items, candidates), len(plan.items)
        for index in range(chunks):
            segment, _ = plan.locate(index)
            mels = await self._generate(rows[index::chunks], job.options.sampling)  # the chunk's candidates
            if candidates == 1:
                (wave,) = await asyncio.to_thread(self.synth.vocode, mels)
            else:
                _, wave, choice = await asyncio.to_thread(self.synth.choose_chunk, plan, index, mels)
                logger.info(
                    "stream chunk %d: kept seed %d of %s", index, choice.seed, [s.as_dict() for s in choice.scores]
                )
            ready = joiner.push(wave * segment.reference.rms_scale)
            samples += len(ready)
            yield ready
        tail = joiner.finish()
        self.metrics.synthesized(started, samples + len(tail), self.synth.mel.target_sample_rate)
        yield tail
