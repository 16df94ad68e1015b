"""Response and request models shared by the routers (they shape /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str
    errors: list[dict[str, str]] = []
    model_config = ConfigDict(extra="allow")


class ListOf(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class OperationError(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}
    model_config = ConfigDict(extra="allow")


class OperationOut(BaseModel):
    id: str
    kind: str
    tenant_id: str
    resource_type: str | None
    resource_id: str | None
    state: Literal["pending", "running", "succeeded", "failed"]
    progress: int = Field(ge=0, le=100)
    attempts: int
    error: OperationError | None
    result: dict[str, Any] | None
    request_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    id: str
    time: datetime
    tenant_id: str | None
    actor_id: str | None
    actor_name: str | None
    auth_method: str | None
    resource_type: str | None
    resource_id: str | None
    action: str
    result: Literal["success", "failure"]
    status_code: int | None
    failure_reason: str | None
    request_id: str | None
    source_ip: str | None
    operation_id: str | None
    details: dict[str, Any]


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)
    tenant: str = Field("system", min_length=1, max_length=64)


class UserBrief(BaseModel):
    id: str
    username: str
    tenant_id: str
    tenant_name: str
    role: str
    is_platform_admin: bool


class TokenOut(BaseModel):
    token: str
    expires_at: datetime
    user: UserBrief


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 422, 429)
}
