"""The ingress' side of the model deployment: one typed method per ``TTSModel`` method, with every way a call
can fail that is not the client's mapped to an HTTP answer.

- the queue is full (``BackPressureError``): 429 (or 503) with ``Retry-After``, from ``overloaded``;
- the replica died or became unreachable mid-request (``RayActorError``, ``ActorUnavailableError``,
  ``ReplicaUnavailableError``, ``DeploymentUnavailableError``), or its node died holding the finished reply
  in its object store (``ObjectLostError``: a reply over 100 KB, such as audio, waits there until the ingress
  fetches it): 503 with ``Retry-After``; Serve replaces the replica (``TTSModel.check_health``) and the
  client's retry lands on a live one;
- a ``ClientError`` reply: its 4xx, about the request field ``fields`` names for its field (default: the same).

A streamed response has sent its status before its last chunk; a replica dying after the first chunk
ends the body early (logged), which an HTTP client sees as a truncated response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from ray.exceptions import ObjectLostError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from serve.http_errors import ApiError
from serve.messages import (
    ClientError,
    EditJob,
    ModelDescription,
    ReferenceSpec,
    ReplicaHealth,
    StreamStart,
    SynthesisJob,
    SynthesisReply,
)

logger = logging.getLogger("ray.serve")

# RayActorError includes ActorUnavailableError; ObjectLostError includes ObjectReconstructionFailedError
REPLICA_LOST = (RayActorError, ObjectLostError, ReplicaUnavailableError, DeploymentUnavailableError)
RETRY_AFTER_LOST_S = 2
READY_TIMEOUT_S = 5.0
SAME_FIELDS: Mapping[str, str] = MappingProxyType({})  # a ClientError's field names the request's field
Reply = TypeVar("Reply")


def overloaded(exc: BackPressureError) -> ApiError:
    """503 (or 429 with ``backpressure_config``) and always a ``Retry-After`` (1 s unless configured)."""
    retry_after = max(1, int(np.ceil(exc.retry_after_s or 1)))
    return ApiError(
        exc.status_code,
        "overloaded",
        f"the server is busy: {exc.message}; retry later",
        {"Retry-After": str(retry_after)},
    )


def replica_lost(exc: Exception) -> ApiError:
    return ApiError(
        503,
        "model_unavailable",
        f"the model replica serving this request is gone ({type(exc).__name__}); retry: it is being replaced",
        {"Retry-After": str(RETRY_AFTER_LOST_S)},
    )


def answer(reply: Reply | ClientError, fields: Mapping[str, str] = SAME_FIELDS) -> Reply:
    """A reply, or its ``ClientError`` raised as the 4xx it names."""
    if isinstance(reply, ClientError):
        field = fields.get(reply.field, reply.field) if reply.field else None
        raise ApiError(reply.status, reply.code, reply.message, field=field)
    return reply


class ModelClient:
    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        self.streaming = handle.options(stream=True)

    async def synthesize(self, job: SynthesisJob, fields: Mapping[str, str] = SAME_FIELDS) -> SynthesisReply:
        return answer(await self._call("synthesize", job), fields)

    async def edit(self, job: EditJob) -> SynthesisReply:
        return answer(await self._call("edit", job))

    async def check_reference(self, spec: ReferenceSpec) -> str:
        """The reference's transcript (as given, or as the ASR model heard it), prepared and cached."""
        return answer(await self._call("check_reference", spec))

    async def describe(self) -> ModelDescription:
        return await self._call("describe")

    async def health(self) -> ReplicaHealth:
        return await self._call("health")

    async def _call(self, method: str, *args) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except BackPressureError as exc:
            raise overloaded(exc) from exc
        except REPLICA_LOST as exc:
            raise replica_lost(exc) from exc

    async def open_stream(
        self, job: SynthesisJob, fields: Mapping[str, str] = SAME_FIELDS
    ) -> tuple[StreamStart, AsyncIterator[np.ndarray]]:
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
        return answer(first, fields), self._rest(stream)

    @staticmethod
    async def _rest(stream) -> AsyncIterator[np.ndarray]:
        try:
            async for samples in stream:
                yield samples
        except REPLICA_LOST as exc:
            logger.warning("stream ended early: the model replica is gone (%s)", type(exc).__name__)

    async def ready(self) -> ReplicaHealth:
        """What a model replica says of itself within ``READY_TIMEOUT_S``; 503 when none can serve."""
        try:
            return await asyncio.wait_for(self.health(), timeout=READY_TIMEOUT_S)
        except ApiError as exc:
            raise ApiError(503, "not_ready", f"no model replica can serve now: {exc.message}", exc.headers) from exc
        except Exception as exc:  # a timeout, or a replica that failed its probe
            raise ApiError(
                503,
                "not_ready",
                f"no model replica can serve now: {type(exc).__name__}: {exc}",
                {"Retry-After": str(RETRY_AFTER_LOST_S)},
            ) from exc
