"""Who may call the ingress: bearer auth as a FastAPI dependency and CORS, both read from the serving
``TTSIngress`` replica (``ingress_replica``, also the dependency by which routes outside its class reach it).

No ``from __future__ import annotations`` here: FastAPI reads the real annotations of the dependencies.
"""

import hmac
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from ray import serve

from serve.http_errors import ApiError


def check_bearer(request: Request, api_key: str | None) -> None:
    """401 unless ``api_key`` is None or the request carries ``Authorization: Bearer <api_key>``."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <key>)",
            {"WWW-Authenticate": "Bearer"},
        )


def ingress_replica() -> Any:
    """FastAPI dependency: the ``TTSIngress`` instance serving this request (for routes outside its class)."""
    return serve.get_replica_context().servable_object


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of every route but the probes and the page: the serving ingress' ``api_key``."""
    check_bearer(request, ingress_replica().api_key)


AUTHORIZED = [Depends(require_api_key)]

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_EXPOSED = (
    "X-Model-Version, X-Seed, X-Duration-Rule, X-Chunks, X-Sample-Rate, X-Instructions-Ignored, X-Ref-Text, "
    "X-Edited-Spans, X-Candidates, X-Candidate-Scores, X-Chosen-Seed"
)


def install_cors(app: FastAPI) -> None:
    """CORS for the serving ingress replica's ``cors_origins`` (``["*"]`` for any); none: no CORS headers."""

    @app.middleware("http")
    async def _cors(request: Request, call_next):
        origin = request.headers.get("origin")
        allowed = ingress_replica().settings.cors_origins
        if origin is None or not ("*" in allowed or origin in allowed):
            return await call_next(request)
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            asked = request.headers.get("access-control-request-headers", "authorization, content-type")
            headers.update(
                {
                    "Access-Control-Allow-Methods": CORS_METHODS,
                    "Access-Control-Allow-Headers": asked,
                    "Access-Control-Max-Age": "600",
                }
            )
            return Response(status_code=204, headers=headers)
        response = await call_next(request)
        response.headers.update({**headers, "Access-Control-Expose-Headers": CORS_EXPOSED})
        return response
