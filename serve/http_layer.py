"""The HTTP layer of the ingress: JSON errors, body limits and parsers, bearer auth as a FastAPI
dependency, CORS.

Errors crossing HTTP are JSON ``{"error": {"code", "message"}}``; ``ApiError`` carries status, code and
message from anywhere in a route to ``install_error_handlers``' handler.

No ``from __future__ import annotations`` here: FastAPI reads the real annotations of the dependency.
"""

import base64
import binascii
import email.parser
import email.policy
import hmac
import json
import logging
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flowtts.audio import AudioError, load_audio
from serve.messages import SAMPLE_RATE
from serve.schemas import ErrorResponse
from serve.settings import LimitSettings

logger = logging.getLogger("ray.serve")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def __reduce__(self):  # pickle (Ray) rebuilds it from the constructor's arguments
        return (type(self), (self.status, self.code, self.message, self.headers))


HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "overloaded",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as JSON ``{"error": {"code", "message"}}`` with its status."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code,
            HTTP_ERROR_CODES.get(exc.status_code, "http_error"),
            str(exc.detail),
            getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(list(exc.errors())))

    @app.exception_handler(Exception)
    async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server could not complete the request")


# ---------------------------------------------------------------- auth and bodies


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


async def read_body(request: Request, limit: int, drain: int = 0) -> bytes:
    """The body, refused with 413 when it (or its declared length) exceeds ``limit`` bytes. An oversized
    body of up to ``drain`` bytes is read to its end (and dropped) first: a server that answers before the
    client has sent everything resets the connection, and the client never sees the 413."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number")
    if declared is not None and int(declared) > max(limit, drain):
        raise ApiError(413, "payload_too_large", f"request body of {declared} bytes exceeds {limit} bytes")
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            parts.clear()
            if size > drain:
                break
        else:
            parts.append(part)
    if size > limit:
        raise ApiError(413, "payload_too_large", f"request body of {size}+ bytes exceeds {limit} bytes")
    return b"".join(parts)


CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_EXPOSED = "X-Model-Version, X-Seed, X-Duration-Rule, X-Chunks, X-Sample-Rate, X-Instructions-Ignored"


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


# ---------------------------------------------------------------- parsers


def json_body_schema(model: type[BaseModel]) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse_model(model: type[BaseModel], body: bytes) -> Any:
    """JSON bytes -> pydantic model: 400 for malformed JSON, 422 for a body that does not fit."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    return validate_model(model, data)


def validate_model(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc.errors())) from exc


def decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "malformed_base64", f"{field} is not valid base64: {exc}") from exc


def check_text_length(text: str, limit: int) -> None:
    if len(text) > limit:
        raise ApiError(413, "text_too_long", f"text has {len(text)} characters; the limit is {limit}")


def decode_reference_audio(data: bytes, limits: LimitSettings) -> np.ndarray:
    """An uploaded audio file -> float32 mono at 24 kHz: 413 when too big or too long, 422 when unreadable."""
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413, "upload_too_large", f"reference audio of {len(data)} bytes exceeds {limits.max_upload_bytes} bytes"
        )
    try:
        audio = load_audio(data, SAMPLE_RATE).numpy()
    except AudioError as exc:
        raise ApiError(422, "invalid_audio", f"reference audio is not readable audio: {exc}") from exc
    seconds = len(audio) / SAMPLE_RATE
    if seconds > limits.max_reference_seconds:
        raise ApiError(
            413,
            "reference_too_long",
            f"reference audio lasts {seconds:.1f} s; the limit is {limits.max_reference_seconds} s",
        )
    return audio


def parse_multipart(content_type_header: str, body: bytes) -> dict[str, bytes]:
    """``multipart/form-data`` fields by name (stdlib MIME parser; no extra dependency)."""
    head = f"Content-Type: {content_type_header}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ApiError(400, "malformed_multipart", "multipart body could not be parsed (check the boundary)")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


def overloaded(exc: BackPressureError) -> ApiError:
    """503 (or 429 with ``backpressure_config``) and always a ``Retry-After`` (1 s unless configured)."""
    retry_after = max(1, int(np.ceil(exc.retry_after_s or 1)))
    return ApiError(
        exc.status_code,
        "overloaded",
        f"the server is busy: {exc.message}; retry later",
        {"Retry-After": str(retry_after)},
    )
