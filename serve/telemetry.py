"""flowtts' own metrics, through ``ray.serve.metrics`` (Ray's Prometheus endpoint on every node; Serve adds
the ``deployment``, ``replica``, ``application`` and ``route`` tags).

Ingress (per HTTP request): ``flowtts_requests_total{route, method, status}``,
``flowtts_audio_seconds_total``, ``flowtts_time_to_first_audio_seconds`` (histogram, ``streamed`` tag).
Model replica: ``flowtts_real_time_factor`` (histogram: synthesis seconds / audio seconds),
``flowtts_batch_rows`` (histogram: rows per batched sampling call), ``flowtts_queue_depth`` (requests on
the replica waiting for or in sampling), ``flowtts_reference_cache_total{result=hit|miss}``.
Metric objects are made in the replicas' constructors (nothing at import time).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from ray import serve
from ray.serve import metrics

TTFA_BUCKETS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]
RTF_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0]
ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class IngressMetrics:
    def __init__(self):
        self.requests = metrics.Counter(
            "flowtts_requests", "HTTP requests answered, by route and status", tag_keys=("route", "method", "status")
        )
        self.audio_seconds = metrics.Counter("flowtts_audio_seconds", "seconds of audio sent to clients")
        self.ttfa = metrics.Histogram(
            "flowtts_time_to_first_audio_seconds",
            "from the request's arrival to its first audio byte",
            boundaries=TTFA_BUCKETS,
            tag_keys=("streamed",),
        )

    def first_audio(self, started: float, streamed: bool) -> None:
        self.ttfa.observe(time.monotonic() - started, tags={"streamed": str(streamed).lower()})

    def audio(self, samples: int, sample_rate: int) -> None:
        self.audio_seconds.inc(samples / sample_rate, tags={})


class ModelMetrics:
    def __init__(self):
        self.rtf = metrics.Histogram(
            "flowtts_real_time_factor", "synthesis seconds per audio second", boundaries=RTF_BUCKETS, tag_keys=()
        )
        self.batch_rows = metrics.Histogram(
            "flowtts_batch_rows", "rows per batched sampling call", boundaries=ROW_BUCKETS, tag_keys=()
        )
        self.queue = metrics.Gauge("flowtts_queue_depth", "requests on this replica waiting for or in sampling")
        self.cache = metrics.Counter(
            "flowtts_reference_cache", "prepared-reference lookups by result", tag_keys=("result",)
        )
        self.queued = 0

    def enter(self) -> None:
        self.queued += 1
        self.queue.set(self.queued, tags={})

    def leave(self) -> None:
        self.queued -= 1
        self.queue.set(self.queued, tags={})

    def cache_lookup(self, hit: bool) -> None:
        self.cache.inc(tags={"result": "hit" if hit else "miss"})

    def synthesized(self, started: float, samples: int, sample_rate: int) -> None:
        if samples:
            self.rtf.observe((time.monotonic() - started) / (samples / sample_rate), tags={})


def install_request_metrics(app: FastAPI) -> None:
    """Count every answered request by route (the matched path template: bounded), method and status."""

    @app.middleware("http")
    async def _count(request: Request, call_next):
        request.state.started = time.monotonic()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        tags = {"route": route, "method": request.method, "status": str(response.status_code)}
        serve.get_replica_context().servable_object.metrics.requests.inc(tags=tags)
        return response


async def measured_audio(
    body: AsyncIterator[bytes], ingress_metrics: IngressMetrics, started: float, bytes_per_second: int
) -> AsyncIterator[bytes]:
    """A streamed audio body that records its time to first byte and the seconds it carried."""
    sent, first = 0, True
    async for data in body:
        if first and data:
            ingress_metrics.first_audio(started, streamed=True)
            first = False
        sent += len(data)
        yield data
    ingress_metrics.audio_seconds.inc(sent / bytes_per_second, tags={})
