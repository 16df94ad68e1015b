"""The typed errors every layer raises; the API maps them to RFC 9457 in one place.

DomainError
├── InvalidRequest      400/422: the caller sent something wrong (names the field)
├── Unauthenticated     401: no or bad credentials
├── PermissionDenied    403: authenticated but not allowed (names the permission)
├── NotFound            404: missing, or belongs to someone else
├── Conflict            409: state or version conflict; retrying the same call won't help
├── QuotaExceeded       429: over a quota (names quota, usage, limit)
├── RateLimited         429: too many attempts, retry later
└── Unavailable         503: a dependency is down; retrying later may help
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class FieldError:
    """One bad input field, with a sentence that says how to fix it."""

    field: str
    message: str


class DomainError(Exception):
    """Base of every error that is the caller's business to see."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "InternalError"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extra = extra or {}
        self.headers = headers or {}


class InvalidRequest(DomainError):
    status = 400
    code = "InvalidRequest"
    title = "Invalid request"

    @classmethod
    def for_field(cls, name: str, message: str) -> InvalidRequest:
        return cls(f"{name}: {message}", errors=[FieldError(name, message)])


class ValidationFailed(InvalidRequest):
    status = 422
    code = "ValidationFailed"
    title = "Request validation failed"


class Unauthenticated(DomainError):
    status = 401
    code = "Unauthenticated"
    title = "Authentication required"


class PermissionDenied(DomainError):
    status = 403
    code = "PermissionDenied"
    title = "Permission denied"


class NotFound(DomainError):
    status = 404
    code = "NotFound"
    title = "Not found"

    @classmethod
    def resource(cls, kind: str, ident: str) -> NotFound:
        return cls(f"{kind} {ident!r} does not exist", extra={"resource_id": ident})


class MethodNotAllowed(DomainError):
    status = 405
    code = "MethodNotAllowed"
    title = "Method not allowed"


class Conflict(DomainError):
    status = 409
    code = "Conflict"
    title = "Conflict"


class QuotaExceeded(DomainError):
    status = 429
    code = "QuotaExceeded"
    title = "Quota exceeded"

    def __init__(self, quota: str, usage: int, limit: int, requested: int = 1) -> None:
        super().__init__(
            f"quota {quota!r} exceeded: usage {usage} + requested {requested} > limit {limit}; "
            "delete resources or ask an administrator to raise the quota",
            extra={"quota": quota, "usage": usage, "limit": limit, "requested": requested},
        )


class Gone(DomainError):
    """A one-time credential that was already spent or has expired: asking again for a
    new one is the only way on (unlike 403, nothing about the caller is wrong)."""

    status = 410
    code = "Gone"
    title = "Gone"


class RateLimited(DomainError):
    status = 429
    code = "RateLimited"
    title = "Too many requests"


class Unavailable(DomainError):
    status = 503
    code = "Unavailable"
    title = "Service unavailable"


@dataclass
class OperationFailure:
    """Why an operation failed, as stored on the operation and shown to the user."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}
