"""RFC 9457 problem details: the one mapping from errors to HTTP responses.

Every error a client can see goes through :func:`problem_body`, so the shape is the same
for domain errors, validation errors, unknown routes and unexpected crashes (whose
details stay in the log, never in the response).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from altostack.domain.errors import DomainError, FieldError, InvalidRequest, ValidationFailed

log = structlog.get_logger(__name__)

PROBLEM_TYPE = "https://altostack.dev/problems/"
MEDIA_TYPE = "application/problem+json"

_CODES = {
    400: "InvalidRequest",
    401: "Unauthenticated",
    403: "PermissionDenied",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationFailed",
    429: "TooManyRequests",
    503: "Unavailable",
}


def problem_body(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    code = code or _CODES.get(status, "InternalError")
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        "errors": [{"field": e.field, "message": e.message} for e in errors or []],
    }
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return body


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, default=str), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def from_domain(exc: DomainError, instance: str | None) -> Response:
    return problem_response(
        exc.status,
        problem_body(
            exc.status,
            exc.detail,
            code=exc.code,
            title=exc.title,
            instance=instance,
            errors=exc.errors,
            extra=exc.extra,
        ),
        exc.headers,
    )


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        source, rest = parts[0], parts[1:]
        return ".".join(rest) if rest else source
    return ".".join(parts)


def _field_error(err: dict[str, Any]) -> FieldError:
    loc = err.get("loc", ())
    if err.get("type") == "json_invalid":
        # FastAPI puts the character offset where a field name would be: ("body", 34).
        reason = (err.get("ctx") or {}).get("error") or err.get("msg") or "invalid JSON"
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return FieldError("body", f"the body is not valid JSON: {reason}{where}")
    return FieldError(_field_name(loc), str(err.get("msg", "invalid")))


_BAD_VALUES = {
    "22021": "text must not contain NUL (\\u0000) characters",  # character_not_in_repertoire
    "22P05": "text must not contain NUL (\\u0000) characters",  # untranslatable_character
    "22001": "a text is too long",
    "22003": "a number is out of range",
    "22007": "a date or time is not valid",
    "22008": "a date or time is out of range",
}


def bad_value_reason(exc: DBAPIError) -> str | None:
    """Why the database refused a value (SQLSTATE class 22, "data exception"), in words
    safe to show; None when the error is not about a value (then it is a server error).

    Such values (NUL in text is the usual one: PostgreSQL cannot store it) come from the
    request, so they are the caller's 400, not our 500."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(
        getattr(orig, "__cause__", None), "sqlstate", None
    )
    if not isinstance(state, str) or not state.startswith("22"):
        return None
    return _BAD_VALUES.get(state, "a value is not valid")


def validation_errors(exc: RequestValidationError) -> ValidationFailed:
    errors = [_field_error(err) for err in exc.errors()]
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5]) or "invalid request"
    return ValidationFailed(summary, errors=errors)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    async def on_domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        return from_domain(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return from_domain(validation_errors(exc), request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        if status == 404 and detail == "Not Found":
            detail = f"no route {request.url.path!r}; see /docs for the API"
        elif status == 405:
            detail = f"method {request.method} is not allowed on {request.url.path!r}"
        return problem_response(
            status,
            problem_body(status, detail, instance=request.url.path),
            dict(exc.headers or {}),
        )

    async def on_database(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        reason = bad_value_reason(exc)
        if reason is None:
            return await on_crash(request, exc)
        log.warning("database refused a value from the request", path=request.url.path)
        return from_domain(
            InvalidRequest(f"the request contains a value the database cannot use: {reason}"),
            request.url.path,
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", path=request.url.path, exc_info=exc)
        return problem_response(
            500,
            problem_body(
                500,
                "an internal error occurred; it was logged with this request's id",
                instance=request.url.path,
            ),
        )

    app.add_exception_handler(DomainError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DBAPIError, on_database)
    app.add_exception_handler(Exception, on_crash)
