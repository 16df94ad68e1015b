"""API keys: an access key id and a secret that signs requests (API.md).

The secret is shown once and never stored: it is an HMAC of the key id and a random nonce
under the server's secret key, so the server can recompute it to check a signature while
a copy of the database alone is useless to an attacker.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select

from altostack.db.database import Database
from altostack.db.models import ApiKey, User
from altostack.db.repositories import Page
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import InvalidRequest, PermissionDenied
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.auth import AuthService, derive_secret
from altostack.services.context import RequestContext
from altostack.services.quotas import QuotaService
from altostack.services.roles import role_exists


def key_view(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "user_id": key.user_id,
        "description": key.description,
        "role": key.role,
        "status": key.status,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }
    if secret is not None:
        view["secret"] = secret
    return view


class ApiKeyService:
    def __init__(
        self, db: Database, quotas: QuotaService, auth: AuthService, master_key: bytes
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.auth = auth
        self.master_key = master_key

    async def create(
        self,
        ctx: RequestContext,
        *,
        description: str | None,
        expires_at: datetime | None,
        role: str | None,
    ) -> dict[str, Any]:
        authz.require(ctx, "apikey:create")
        p = ctx.principal
        if p.auth_method == "apikey":
            raise PermissionDenied("API keys cannot create API keys; log in with a password")
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidRequest.for_field("expires_at", "must include a time zone (RFC 3339)")
            if expires_at <= utcnow():
                raise InvalidRequest.for_field("expires_at", "must be in the future")
        async with self.db.uow() as uow:
            # The key's role only ever narrows: the caller gets the intersection of the
            # user's and the key's permissions at every request.
            if role is not None and not await role_exists(uow, p.tenant_id, role):
                raise InvalidRequest.for_field("role", f"no role {role!r} in this tenant")
            await self.quotas.consume(uow, p.tenant_id, "api_keys")
            key = ApiKey(
                id=new_id("key"),
                tenant_id=p.tenant_id,
                user_id=p.user_id,
                description=description,
                role=role,
                nonce=secrets.token_hex(16),
                status="active",
                expires_at=expires_at,
            )
            uow.session.add(key)
            await uow.commit()
        return key_view(key, derive_secret(self.master_key, key.id, key.nonce))

    async def _load(self, uow: UnitOfWork, ctx: RequestContext, key_id: str, perm: str) -> ApiKey:
        key = await uow.session.get(ApiKey, key_id)
        authz.require(
            ctx, perm, tenant_id=key.tenant_id if key else None, kind="API key", ident=key_id
        )
        assert key is not None
        foreign = key.user_id != ctx.principal.user_id
        if foreign and not perm.endswith(":read") and not authz.can(ctx.principal, "user:update"):
            raise PermissionDenied(
                "this API key belongs to another user; revoking it needs 'user:update'",
                extra={"permission": "user:update"},
            )
        return key

    async def get(self, ctx: RequestContext, key_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return key_view(await self._load(uow, ctx, key_id, "apikey:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        user_id: str | None,
        status: str | None,
        tenant_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[ApiKey]:
        authz.require(ctx, "apikey:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(ApiKey.tenant_id == target)
        if user_id:
            where.append(ApiKey.user_id == user_id)
        if status:
            where.append(ApiKey.status == status)
        async with self.db.uow(write=False) as uow:
            return await uow.api_keys.page(where, limit=limit, cursor=cursor)

    async def revoke(self, ctx: RequestContext, key_id: str) -> None:
        async with self.db.uow() as uow:
            key = await self._load(uow, ctx, key_id, "apikey:delete")
            if key.status == "active":
                key.status = "revoked"
                key.revoked_at = utcnow()
                await self.quotas.release(uow, key.tenant_id, "api_keys")
            ctx.audit.details = {"tenant_id": key.tenant_id}
            await uow.commit()
        await self.auth.forget_key(key_id)


async def release_keys_of(uow: UnitOfWork, quotas: QuotaService, user: User) -> None:
    """A deleted user's active keys stop counting against the tenant's quota."""
    active = await uow.session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.status == "active")
    )
    if active:
        await quotas.release(uow, user.tenant_id, "api_keys", int(active))
