"""Typed errors of the SDK.

An HTTP error answer becomes an :class:`ApiError` subclass chosen by status, so callers can
``except NotFound`` instead of comparing numbers, while the problem+json fields (and the
raw body, for fields this SDK does not know yet) stay available on the exception.

AltoError
├── ConfigurationError     no URL or no usable credentials
├── TransportFailure       the server could not be reached (after retries)
├── ApiError               the server answered with an error (problem+json)
│   ├── BadRequest 400 ── ValidationFailed 422
│   ├── Unauthenticated 401, PermissionDenied 403, NotFound 404, Conflict 409
│   ├── TooManyRequests 429
│   └── ServerError 5xx ── Unavailable 503
├── OperationFailed        a waited-for operation ended in ``failed``
└── WaitTimeout            a waited-for operation did not end in time
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


class AltoError(Exception):
    """Base of everything the SDK raises on purpose."""


class ConfigurationError(AltoError):
    """The client cannot be built: no API URL, or an incomplete API key."""


class TransportFailure(AltoError):
    """The request never got an answer, even after the retries."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class FieldIssue:
    """One entry of a problem's ``errors`` list: which input field and why."""

    field: str
    message: str


class ApiError(AltoError):
    """An error answer from the API, with the RFC 9457 fields unpacked."""

    def __init__(
        self,
        status: int,
        *,
        code: str,
        title: str,
        detail: str,
        errors: list[FieldIssue] | None = None,
        body: Any = None,
        raw: bytes = b"",
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.body = body
        self.raw = raw
        self.request_id = request_id
        self.headers = headers or {}
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.code}: {self.detail or self.title}"
        issues = [i for i in self.errors if i.message and i.message not in self.detail]
        if issues:
            text += " (" + "; ".join(f"{i.field}: {i.message}" for i in issues) + ")"
        return text

    @property
    def problem(self) -> dict[str, Any]:
        """The problem document as a dict (empty when the server sent something else)."""
        return self.body if isinstance(self.body, dict) else {}


class BadRequest(ApiError):
    """400: the request is wrong; ``errors`` names the fields."""


class ValidationFailed(BadRequest):
    """422: the body or query did not validate."""


class Unauthenticated(ApiError):
    """401: no credentials, expired token, unknown key or bad signature."""


class PermissionDenied(ApiError):
    """403: authenticated, but not allowed to do this."""


class NotFound(ApiError):
    """404: missing (or another tenant's, which the API never reveals)."""


class Conflict(ApiError):
    """409: state or version conflict, or an Idempotency-Key reused for another body."""


class TooManyRequests(ApiError):
    """429: over a quota or a rate limit."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers.get("retry-after"))


class ServerError(ApiError):
    """5xx: the server failed; the request id helps find it in the server log."""


class Unavailable(ServerError):
    """503: a dependency is down; retrying later may help."""


class OperationFailed(AltoError):
    """The operation ended in ``failed``; ``operation["error"]`` says why."""

    def __init__(self, operation: dict[str, Any]) -> None:
        self.operation = operation
        error = operation.get("error") or {}
        reason = error.get("message") or error.get("code") or "no reason given"
        super().__init__(f"operation {operation.get('id')} failed: {reason}")


class WaitTimeout(AltoError):
    """The operation was still running when the wait ran out; it may yet finish."""

    def __init__(self, operation: dict[str, Any], timeout: float) -> None:
        self.operation = operation
        self.timeout = timeout
        super().__init__(
            f"operation {operation.get('id')} is still {operation.get('state')} "
            f"after {timeout:g} s (progress {operation.get('progress', 0)}%)"
        )


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: TooManyRequests,
    503: Unavailable,
}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


def from_response(response: httpx.Response) -> ApiError:
    """Build the typed error for an error answer, problem+json or not.

    A proxy in front of the API may answer with HTML; the status still picks the class,
    and the text becomes the detail so the user sees what actually came back.
    """
    raw = response.content
    body: Any
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    problem = body if isinstance(body, dict) else {}
    issues = [
        FieldIssue(str(e.get("field", "")), str(e.get("message", "")))
        for e in problem.get("errors") or []
        if isinstance(e, dict)
    ]
    detail = problem.get("detail")
    if detail is None:
        detail = body.strip()[:500] if isinstance(body, str) else ""
    return error_class(response.status_code)(
        response.status_code,
        code=str(problem.get("code") or response.reason_phrase.replace(" ", "") or "Error"),
        title=str(problem.get("title") or response.reason_phrase),
        detail=str(detail),
        errors=issues,
        body=body,
        raw=raw,
        request_id=response.headers.get("x-request-id"),
        headers={k.lower(): v for k, v in response.headers.items()},
    )
