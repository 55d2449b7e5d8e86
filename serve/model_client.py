"""The ingress' side of the model deployment: calls through the handle, with every way a call can fail
that is not the client's mapped to an HTTP answer.

- the queue is full (``BackPressureError``): 429 (or 503) with ``Retry-After``, from ``overloaded``;
- the replica died or became unreachable mid-request (``RayActorError``, ``ActorUnavailableError``,
  ``ReplicaUnavailableError``, ``DeploymentUnavailableError``): 503 with ``Retry-After``; Serve replaces
  the replica (``TTSModel.check_health``) and the client's retry lands on a live one;
- a ``ClientError`` reply: its 4xx.

A streamed response has sent its status before its last chunk; a replica dying after the first chunk
ends the body early (logged), which an HTTP client sees as a truncated response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from serve.http_layer import ApiError, overloaded
from serve.messages import ClientError, StreamStart, SynthesisJob

logger = logging.getLogger("ray.serve")

REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)  # ActorUnavailableError too
RETRY_AFTER_LOST_S = 2
READY_TIMEOUT_S = 5.0


def replica_lost(exc: Exception) -> ApiError:
    return ApiError(
        503,
        "model_unavailable",
        f"the model replica serving this request is gone ({type(exc).__name__}); retry: it is being replaced",
        {"Retry-After": str(RETRY_AFTER_LOST_S)},
    )


def answer(reply: Any) -> Any:
    """A reply, or its ``ClientError`` raised as the 4xx it names."""
    if isinstance(reply, ClientError):
        raise ApiError(reply.status, reply.code, reply.message)
    return reply


class ModelClient:
    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.streaming = handle.options(stream=True)

    async def call(self, method: str, *args) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except BackPressureError as exc:
            raise overloaded(exc) from exc
        except REPLICA_LOST as exc:
            raise replica_lost(exc) from exc

    async def open_stream(self, job: SynthesisJob) -> tuple[StreamStart, AsyncIterator[np.ndarray]]:
        """Start a streamed synthesis; the first item (start or client error) decides the status."""
        stream = self.streaming.synthesize_stream.remote(job)
        try:
            first = await stream.__anext__()
        except BackPressureError as exc:
            raise overloaded(exc) from exc
        except REPLICA_LOST as exc:
            raise replica_lost(exc) from exc
        if isinstance(first, ClientError):
            stream.cancel()
        return answer(first), self._rest(stream)

    @staticmethod
    async def _rest(stream) -> AsyncIterator[np.ndarray]:
        try:
            async for samples in stream:
                yield samples
        except REPLICA_LOST as exc:
            logger.warning("stream ended early: the model replica is gone (%s)", type(exc).__name__)

    async def ready(self) -> dict:
        """What a model replica says of itself within ``READY_TIMEOUT_S``; 503 when none can serve."""
        try:
            return await asyncio.wait_for(self.call("health"), timeout=READY_TIMEOUT_S)
        except ApiError as exc:
            raise ApiError(503, "not_ready", f"no model replica can serve now: {exc.message}", exc.headers) from exc
        except Exception as exc:  # a timeout, or a replica that failed its probe
            raise ApiError(
                503,
                "not_ready",
                f"no model replica can serve now: {type(exc).__name__}: {exc}",
                {"Retry-After": str(RETRY_AFTER_LOST_S)},
            ) from exc
