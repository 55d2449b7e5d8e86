"""Reading request bodies: the size cap (an oversized body is drained so that the client sees its 413), JSON
bodies as the routes' pydantic models (a FastAPI dependency), multipart forms, base64 and reference audio.

No ``from __future__ import annotations`` here: FastAPI reads the real annotations of the dependencies.
"""

import base64
import binascii
import email.parser
import email.policy
import json
from typing import Any, TypeVar

import numpy as np
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from flowtts.audio import AudioError, load_audio
from serve.http_access import ingress_replica
from serve.http_errors import ApiError, invalid_request
from serve.messages import SAMPLE_RATE
from serve.settings import LimitSettings, ServeSettings

Model = TypeVar("Model", bound=BaseModel)


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


def body_limit(settings: ServeSettings) -> int:
    """The largest body a route reads: a base64 upload at the size limit plus the longest text."""
    text_chars = max(settings.limits.max_text_chars, settings.openai.max_input_chars)
    return settings.limits.max_upload_bytes * 4 // 3 + 4 * text_chars + 65536


def capped_body(max_bytes: int | None = None) -> Any:
    """FastAPI dependency: the body within ``max_bytes`` (default: the serving ingress' ``body_limit``),
    drained up to ``limits.drain_body_bytes`` when over it."""

    async def body(request: Request) -> bytes:
        settings = ingress_replica().settings
        limit = body_limit(settings) if max_bytes is None else max_bytes
        return await read_body(request, limit, settings.limits.drain_body_bytes)

    return Depends(body)


def json_body(model: type[Model], max_bytes: int | None = None) -> Any:
    """FastAPI dependency: the body as ``model`` (read as ``capped_body`` reads it; 400 for malformed JSON,
    422 naming the field for a body that does not fit)."""

    async def parsed(body: bytes = capped_body(max_bytes)) -> Model:
        return parse_model(model, body)

    return Depends(parsed)


def json_body_schema(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of a route whose body ``json_body`` reads: the body's schema in the OpenAPI document."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse_model(model: type[Model], body: bytes) -> Model:
    """JSON bytes -> pydantic model: 400 for malformed JSON, 422 for a body that does not fit."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from exc
    return validate_model(model, data)


def validate_model(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from exc


def decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "malformed_base64", f"{field} is not valid base64: {exc}", field=field) from exc


def check_text_length(text: str, limit: int, field: str) -> None:
    if len(text) > limit:
        raise ApiError(413, "text_too_long", f"text has {len(text)} characters; the limit is {limit}", field=field)


def decode_reference_audio(data: bytes, limits: LimitSettings, field: str) -> np.ndarray:
    """An uploaded audio file (request field ``field``) -> float32 mono at 24 kHz: 413 when too big or too long,
    422 when unreadable."""
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            "upload_too_large",
            f"reference audio of {len(data)} bytes exceeds {limits.max_upload_bytes} bytes",
            field=field,
        )
    try:
        audio = load_audio(data, SAMPLE_RATE).numpy()
    except AudioError as exc:
        raise ApiError(422, "invalid_audio", f"reference audio is not readable audio: {exc}", field=field) from exc
    seconds = len(audio) / SAMPLE_RATE
    if seconds > limits.max_reference_seconds:
        raise ApiError(
            413,
            "reference_too_long",
            f"reference audio lasts {seconds:.1f} s; the limit is {limits.max_reference_seconds} s",
            field=field,
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
