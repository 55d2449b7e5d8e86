"""Audio as HTTP responses: whole files, streamed bodies (one ``StreamEncoder`` per request) and OpenAI's
SSE events, each recording time to first audio and audio seconds in the ingress' metrics.

Streamed responses carry ``X-Accel-Buffering: no`` so that nginx-style proxies pass chunks on at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import AsyncIterator

import numpy as np
from fastapi.responses import Response, StreamingResponse

from serve.audio_formats import STREAMABLE_FORMATS, StreamEncoder, content_type, encode_audio
from serve.messages import StreamStart, SynthesisReply
from serve.telemetry import IngressMetrics

STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-store"}


def audio_headers(reply: SynthesisReply | StreamStart) -> dict[str, str]:
    """``X-Ref-Text`` (percent-encoded UTF-8) only when the model transcribed the reference."""
    headers = {
        "X-Model-Version": reply.model_version,
        "X-Seed": str(reply.seed),
        "X-Duration-Rule": reply.duration_rule,
        "X-Chunks": str(reply.chunks),
        "X-Sample-Rate": str(reply.sample_rate),
    }
    if reply.ref_text is not None:
        headers["X-Ref-Text"] = urllib.parse.quote(reply.ref_text)
    if isinstance(reply, SynthesisReply) and reply.edited_spans:  # "0.500-1.200,1.880-2.130" (seconds)
        headers["X-Edited-Spans"] = ",".join(f"{start:.3f}-{end:.3f}" for start, end in reply.edited_spans)
    headers["X-Candidates"] = str(reply.candidates)
    if isinstance(reply, SynthesisReply) and reply.choices:
        headers.update(candidate_headers(reply))
    return headers


def candidate_headers(reply: SynthesisReply) -> dict[str, str]:
    """``X-Candidate-Scores``: JSON list of ``{chunk, seed, cer, similarity}`` (every candidate of every chunk;
    ``similarity`` null without a speaker judge); ``X-Chosen-Seed``: the kept seed of each chunk, comma-separated."""
    scores = [
        {"chunk": chunk, **{key: value for key, value in score.as_dict().items() if key != "wer"}}
        for chunk, choice in enumerate(reply.choices)
        for score in choice.scores
    ]
    return {
        "X-Candidate-Scores": json.dumps(scores, separators=(",", ":")),
        "X-Chosen-Seed": ",".join(str(choice.seed) for choice in reply.choices),
    }


async def whole_audio(
    reply: SynthesisReply, fmt: str, metrics: IngressMetrics, started: float, headers: dict[str, str]
) -> Response:
    audio = await asyncio.to_thread(encode_audio, reply.audio, reply.sample_rate, fmt)
    metrics.audio(len(reply.audio), reply.sample_rate)
    metrics.first_audio(started, streamed=False)
    return Response(audio, media_type=content_type(fmt), headers={**audio_headers(reply), **headers})


def streamed_audio(
    start: StreamStart,
    chunks: AsyncIterator[np.ndarray],
    fmt: str,
    metrics: IngressMetrics,
    started: float,
    headers: dict[str, str],
) -> StreamingResponse:
    return StreamingResponse(
        _encoded(start, chunks, fmt, metrics, started),
        media_type=content_type(fmt),
        headers={**audio_headers(start), **STREAM_HEADERS, **headers},
    )


def speech_events(
    start: StreamStart,
    chunks: AsyncIterator[np.ndarray],
    fmt: str,
    input_chars: int,
    metrics: IngressMetrics,
    started: float,
    headers: dict[str, str],
) -> StreamingResponse:
    """OpenAI's ``stream_format=sse``: ``speech.audio.delta`` events (chunk by chunk for the streamable
    formats, once encoded for aac), then ``speech.audio.done``."""

    async def events() -> AsyncIterator[bytes]:
        if fmt in STREAMABLE_FORMATS:
            async for data in _encoded(start, chunks, fmt, metrics, started):
                yield sse_event({"type": "speech.audio.delta", "audio": b64(data)})
        else:
            collected = [samples async for samples in chunks]
            audio = np.concatenate(collected) if collected else np.zeros(0, dtype=np.float32)
            encoded = await asyncio.to_thread(encode_audio, audio, start.sample_rate, fmt)
            metrics.audio(len(audio), start.sample_rate)
            metrics.first_audio(started, streamed=True)
            yield sse_event({"type": "speech.audio.delta", "audio": b64(encoded)})
        usage = {"input_tokens": input_chars, "output_tokens": 0, "total_tokens": input_chars}
        yield sse_event({"type": "speech.audio.done", "usage": usage})

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={**audio_headers(start), **STREAM_HEADERS, **headers}
    )


async def _encoded(
    start: StreamStart, chunks: AsyncIterator[np.ndarray], fmt: str, metrics: IngressMetrics, started: float
) -> AsyncIterator[bytes]:
    encoder = StreamEncoder(fmt, start.sample_rate)
    first = True
    async for samples in chunks:
        metrics.audio(len(samples), start.sample_rate)
        data = await asyncio.to_thread(encoder.encode, samples)
        if data:
            if first:
                metrics.first_audio(started, streamed=True)
                first = False
            yield data
    data = encoder.finish()
    if data:
        yield data


def sse_event(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
