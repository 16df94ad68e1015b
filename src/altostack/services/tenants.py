"""Tenants (organisations): created, frozen and deleted by platform administrators."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, delete, select

from altostack.db.database import Database
from altostack.db.models import ApiKey, AuthToken, QuotaLimit, QuotaUsage, Role, Tenant, User
from altostack.db.repositories import Page
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.auth import SYSTEM_TENANT, AuthService
from altostack.services.context import RequestContext
from altostack.services.passwords import Passwords, check_strength
from altostack.services.quotas import QuotaService

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Usage of these does not make a tenant "non-empty": they are credentials, not resources.
NOT_RESOURCES = {"api_keys"}


def tenant_view(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "contact_email": t.contact_email,
        "status": t.status,
        "balance": str(Decimal(t.balance).quantize(Decimal("0.0001"))),
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }


def check_username(username: str) -> None:
    if not USERNAME.match(username):
        raise InvalidRequest.for_field(
            "username",
            "1-64 characters: letters, digits and . _ @ -, starting with a letter or digit",
        )


class TenantService:
    def __init__(
        self, db: Database, passwords: Passwords, quotas: QuotaService, auth: AuthService
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.quotas = quotas
        self.auth = auth

    async def create(
        self,
        ctx: RequestContext,
        name: str,
        contact_email: str | None,
        owner_username: str,
        owner_password: str,
    ) -> dict[str, Any]:
        authz.require(ctx, "tenant:create")
        if not NAME.match(name):
            raise InvalidRequest.for_field(
                "name", "2-63 characters: lower-case letters, digits and '-', not starting with '-'"
            )
        check_username(owner_username)
        check_strength(owner_password, "owner.password")
        password_hash = await self.passwords.hash(owner_password)
        async with self.db.uow() as uow:
            if await uow.tenants.by_name(name) is not None:
                raise Conflict(f"a tenant named {name!r} already exists; pick another name")
            tenant = Tenant(
                id=new_id("tenant"), name=name, contact_email=contact_email, status="active"
            )
            uow.tenants.add(tenant)
            await uow.flush()
            uow.users.add(
                User(
                    id=new_id("user"),
                    tenant_id=tenant.id,
                    username=owner_username,
                    password_hash=password_hash,
                    role="owner",
                    is_platform_admin=False,
                    scope_tags={},
                )
            )
            await self.quotas.init_tenant(uow, tenant.id)
            ctx.audit.details = {"tenant_id": tenant.id}
            await uow.commit()
        return tenant_view(tenant)

    async def get(self, ctx: RequestContext, tenant_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            tenant = await uow.tenants.get(tenant_id)
        authz.require(
            ctx,
            "tenant:read",
            tenant_id=tenant.id if tenant else None,
            kind="tenant",
            ident=tenant_id,
        )
        assert tenant is not None
        return tenant_view(tenant)

    async def list(
        self,
        ctx: RequestContext,
        *,
        status: str | None,
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[Tenant]:
        authz.require(ctx, "tenant:read")
        where: list[ColumnElement[bool]] = []
        if status:
            where.append(Tenant.status == status)
        if name:
            where.append(Tenant.name == name)
        async with self.db.uow(write=False) as uow:
            return await uow.tenants.page(where, limit=limit, cursor=cursor)

    async def set_status(self, ctx: RequestContext, tenant_id: str, status: str) -> dict[str, Any]:
        verb = {"frozen": "freeze", "active": "unfreeze"}[status]
        async with self.db.uow() as uow:
            tenant = await uow.tenants.get(tenant_id)
            authz.require(
                ctx,
                f"tenant:{verb}",
                tenant_id=tenant.id if tenant else None,
                kind="tenant",
                ident=tenant_id,
            )
            assert tenant is not None
            if tenant.name == SYSTEM_TENANT:
                raise Conflict("the system tenant cannot be frozen")
            tenant.status = status
            ctx.audit.details = {"tenant_id": tenant.id}
            await uow.commit()
        await self.auth.invalidate_user(None)
        return tenant_view(tenant)

    async def delete(self, ctx: RequestContext, tenant_id: str) -> None:
        async with self.db.uow() as uow:
            tenant = await uow.tenants.get(tenant_id)
            authz.require(
                ctx,
                "tenant:delete",
                tenant_id=tenant.id if tenant else None,
                kind="tenant",
                ident=tenant_id,
            )
            assert tenant is not None
            if tenant.name == SYSTEM_TENANT:
                raise Conflict("the system tenant cannot be deleted")
            in_use = await self.quotas.usage_total(uow, tenant.id, NOT_RESOURCES)
            if in_use:
                raise Conflict(
                    f"tenant {tenant.name!r} still has resources ({in_use} counted in its "
                    "quotas); delete them first"
                )
            user_ids = select(User.id).where(User.tenant_id == tenant.id)
            for stmt in (
                delete(AuthToken).where(AuthToken.user_id.in_(user_ids)),
                delete(ApiKey).where(ApiKey.tenant_id == tenant.id),
                delete(User).where(User.tenant_id == tenant.id),
                delete(Role).where(Role.tenant_id == tenant.id),
                delete(QuotaLimit).where(QuotaLimit.tenant_id == tenant.id),
                delete(QuotaUsage).where(QuotaUsage.tenant_id == tenant.id),
            ):
                await uow.session.execute(stmt.execution_options(synchronize_session=False))
            await uow.session.delete(tenant)
            ctx.audit.details = {"tenant_id": tenant.id, "name": tenant.name}
            await uow.commit()
        await self.auth.invalidate_user(None)
