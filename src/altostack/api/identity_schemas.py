"""Request and response models of the identity routes (tenants, users, roles, keys, quotas)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OwnerIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)


class TenantCreate(Strict):
    name: str = Field(min_length=2, max_length=63, description="lower case, digits, '-'")
    contact_email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    owner: OwnerIn


class TenantOut(BaseModel):
    id: str
    name: str
    contact_email: str | None
    status: Literal["active", "frozen"]
    balance: str = Field(description="Decimal, in the platform currency")
    created_at: datetime
    updated_at: datetime


class UserCreate(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)
    role: str = Field("readonly", min_length=1, max_length=64)
    tenant_id: str | None = Field(None, max_length=40, description="platform admins only")
    scope_tags: dict[str, str] | None = Field(
        None, description="Limit the user to resources carrying all these tags"
    )


class UserUpdate(Strict):
    role: str | None = Field(None, min_length=1, max_length=64)
    scope_tags: dict[str, str] | None = None


class PasswordReset(Strict):
    password: str = Field(min_length=1, max_length=128)


class PasswordChange(Strict):
    old_password: str = Field(min_length=1, max_length=128)
    new_password: str = Field(min_length=1, max_length=128)


class UserOut(BaseModel):
    id: str
    tenant_id: str
    username: str
    role: str
    status: Literal["active", "disabled"]
    is_platform_admin: bool
    scope_tags: dict[str, str]
    created_at: datetime
    updated_at: datetime


class RoleCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    permissions: list[str] = Field(max_length=200)
    description: str | None = Field(None, max_length=255)


class RoleUpdate(Strict):
    permissions: list[str] | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=255)


class RoleOut(BaseModel):
    id: str
    name: str
    tenant_id: str | None
    builtin: bool
    description: str | None
    permissions: list[str]
    created_at: datetime | None


class RoleList(BaseModel):
    items: list[RoleOut]
    next_cursor: str | None = None


class ApiKeyCreate(Strict):
    description: str | None = Field(None, max_length=255)
    expires_at: datetime | None = None
    role: str | None = Field(None, min_length=1, max_length=64)


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    user_id: str
    description: str | None
    role: str | None
    status: Literal["active", "revoked"]
    expires_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="Shown only in this response; store it now")


class QuotaItem(BaseModel):
    limit: int = Field(description="-1 means unlimited")
    usage: int
    default: bool


class QuotaOut(BaseModel):
    tenant_id: str
    region: str
    quotas: dict[str, QuotaItem]


class QuotaSet(Strict):
    vcpus: int | None = Field(None, ge=-1)
    memory_mib: int | None = Field(None, ge=-1)
    vms: int | None = Field(None, ge=-1)
    disks: int | None = Field(None, ge=-1)
    disk_gib: int | None = Field(None, ge=-1)
    snapshots: int | None = Field(None, ge=-1)
    vpcs: int | None = Field(None, ge=-1)
    subnets: int | None = Field(None, ge=-1)
    nics: int | None = Field(None, ge=-1)
    eips: int | None = Field(None, ge=-1)
    security_groups: int | None = Field(None, ge=-1)
    nat_gateways: int | None = Field(None, ge=-1)
    load_balancers: int | None = Field(None, ge=-1)
    api_keys: int | None = Field(None, ge=-1)
    images: int | None = Field(None, ge=-1)
