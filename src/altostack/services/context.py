"""Who is calling and from where: passed into every service call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    tenant_id: str
    tenant_name: str
    role: str
    is_platform_admin: bool
    auth_method: str  # "token" | "apikey" | "system"
    tenant_status: str = "active"
    credential_id: str | None = None
    permissions: tuple[str, ...] = ()
    # An API key created with a narrower role: the caller gets the intersection.
    key_permissions: tuple[str, ...] | None = None
    scope_tags: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return f"{self.tenant_name}/{self.username}"


SYSTEM = Principal(
    user_id="system",
    username="system",
    tenant_id="system",
    tenant_name="system",
    role="system",
    is_platform_admin=True,
    auth_method="system",
    permissions=("*:*",),
)


@dataclass
class Audit:
    """What the event log should say about this request, filled in by the services."""

    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    operation_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestContext:
    principal: Principal
    request_id: str | None = None
    source_ip: str | None = None
    audit: Audit = field(default_factory=Audit)
