"""Errors crossing HTTP: ``ApiError`` (status, code, message, headers and the request ``field`` it is about)
raised anywhere in a route, and the handlers that answer every error as JSON
``{"error": {"code", "message", "field"}}`` (``field`` only where there is one; never on the OpenAI routes,
which keep OpenAI's ``{"code", "message"}``).

No ``from __future__ import annotations`` here: FastAPI reads the real annotations of the handlers.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schemas import ErrorResponse

logger = logging.getLogger("ray.serve")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, field: str | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.field = status, code, message, headers or {}, field

    def __reduce__(self):  # pickle (Ray) rebuilds it from the constructor's arguments
        return (type(self), (self.status, self.code, self.message, self.headers, self.field))


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


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, field: str | None = None
) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, "field": field}})
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts)


def validation_field(errors: list[dict]) -> str | None:
    """The request field the first error is about (its top-level name), if it is about one."""
    loc = [p for p in (errors[0].get("loc", ()) if errors else ()) if p != "body"]
    return loc[0] if loc and isinstance(loc[0], str) else None


def invalid_request(errors: list[dict]) -> ApiError:
    return ApiError(422, "invalid_request", validation_message(errors), field=validation_field(errors))


def install_error_handlers(app: FastAPI, openai_routes: tuple[str, ...] = ()) -> None:
    """Every error leaves as JSON ``{"error": {"code", "message", "field"}}`` with its status; on
    ``openai_routes`` (route paths) as ``{"error": {"code", "message"}}``."""

    def answer(request: Request, error: ApiError) -> JSONResponse:
        route = getattr(request.scope.get("route"), "path", None)
        field = None if route in openai_routes else error.field
        return error_response(error.status, error.code, error.message, error.headers, field)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        return answer(request, ApiError(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(request, invalid_request(list(exc.errors())))

    @app.exception_handler(Exception)
    async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server could not complete the request")
