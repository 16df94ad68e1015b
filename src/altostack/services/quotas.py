"""Quotas: limits per tenant and region, and usage counted in the resource's transaction.

``consume`` is one conditional UPDATE (``used + n <= limit``): on PostgreSQL concurrent
creators queue on the row lock and re-check the condition, on SQLite writers are already
serialised, so 40 racing creates against a limit of 10 give exactly 10 successes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from altostack.db.database import Database
from altostack.db.models import QuotaLimit, QuotaUsage, Tenant
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import InvalidRequest, NotFound, PermissionDenied, QuotaExceeded
from altostack.services import authz
from altostack.services.context import RequestContext

QUOTA_RESOURCES = (
    "vcpus",
    "memory_mib",
    "vms",
    "disks",
    "disk_gib",
    "snapshots",
    "vpcs",
    "subnets",
    "nics",
    "eips",
    "security_groups",
    "nat_gateways",
    "load_balancers",
    "api_keys",
    "images",
)

DEFAULT_LIMITS: dict[str, int] = {
    "vcpus": 64,
    "memory_mib": 131072,
    "vms": 20,
    "disks": 40,
    "disk_gib": 2000,
    "snapshots": 100,
    "vpcs": 5,
    "subnets": 20,
    "nics": 20,
    "eips": 10,
    "security_groups": 20,
    "nat_gateways": 5,
    "load_balancers": 5,
    "api_keys": 10,
    "images": 50,
}
UNLIMITED = -1


class QuotaService:
    def __init__(self, db: Database, defaults: dict[str, int], region: str) -> None:
        self.db = db
        self.defaults = {**DEFAULT_LIMITS, **defaults}
        self.region = region

    async def init_tenant(self, uow: UnitOfWork, tenant_id: str) -> None:
        """Create the usage rows a new tenant's conditional updates will lock."""
        for resource in QUOTA_RESOURCES:
            uow.session.add(
                QuotaUsage(tenant_id=tenant_id, region=self.region, resource=resource, used=0)
            )
        await uow.flush()

    async def limit_of(self, uow: UnitOfWork, tenant_id: str, resource: str) -> int:
        row = await uow.session.get(QuotaLimit, (tenant_id, self.region, resource))
        return row.limit if row is not None else self.defaults[resource]

    async def consume(
        self, uow: UnitOfWork, tenant_id: str, resource: str, amount: int = 1
    ) -> None:
        """Take ``amount`` of ``resource`` or raise QuotaExceeded (429) naming it."""
        if resource not in QUOTA_RESOURCES:
            raise ValueError(f"unknown quota {resource!r}")
        await self._ensure_row(uow, tenant_id, resource)
        limit = await self.limit_of(uow, tenant_id, resource)
        stmt = update(QuotaUsage).where(
            QuotaUsage.tenant_id == tenant_id,
            QuotaUsage.region == self.region,
            QuotaUsage.resource == resource,
        )
        if limit != UNLIMITED:
            stmt = stmt.where(QuotaUsage.used + amount <= limit)
        result = await uow.session.execute(
            stmt.values(used=QuotaUsage.used + amount).execution_options(synchronize_session=False)
        )
        if not getattr(result, "rowcount", 0):
            used = await self._used(uow, tenant_id, resource)
            raise QuotaExceeded(resource, used, limit, amount)

    async def release(
        self, uow: UnitOfWork, tenant_id: str, resource: str, amount: int = 1
    ) -> None:
        await uow.session.execute(
            update(QuotaUsage)
            .where(
                QuotaUsage.tenant_id == tenant_id,
                QuotaUsage.region == self.region,
                QuotaUsage.resource == resource,
                QuotaUsage.used >= amount,
            )
            .values(used=QuotaUsage.used - amount)
            .execution_options(synchronize_session=False)
        )

    async def _ensure_row(self, uow: UnitOfWork, tenant_id: str, resource: str) -> None:
        key = (tenant_id, self.region, resource)
        if await uow.session.get(QuotaUsage, key) is None:
            uow.session.add(
                QuotaUsage(tenant_id=tenant_id, region=self.region, resource=resource, used=0)
            )
            await uow.flush()

    async def _used(self, uow: UnitOfWork, tenant_id: str, resource: str) -> int:
        used = await uow.session.scalar(
            select(QuotaUsage.used).where(
                QuotaUsage.tenant_id == tenant_id,
                QuotaUsage.region == self.region,
                QuotaUsage.resource == resource,
            )
        )
        return int(used or 0)

    async def usage_total(self, uow: UnitOfWork, tenant_id: str, exclude: set[str]) -> int:
        rows = await uow.session.scalars(
            select(QuotaUsage.used).where(
                QuotaUsage.tenant_id == tenant_id, QuotaUsage.resource.not_in(exclude)
            )
        )
        return sum(int(v) for v in rows)

    async def show(self, ctx: RequestContext, tenant_id: str | None) -> dict[str, Any]:
        target = tenant_id or ctx.principal.tenant_id
        authz.require(ctx, "quota:read", tenant_id=target, kind="tenant", ident=target)
        async with self.db.uow(write=False) as uow:
            return await self._view(uow, target)

    async def _view(self, uow: UnitOfWork, tenant_id: str) -> dict[str, Any]:
        if await uow.session.get(Tenant, tenant_id) is None:
            raise NotFound.resource("tenant", tenant_id)
        limits = {
            row.resource: row.limit
            for row in await uow.session.scalars(
                select(QuotaLimit).where(
                    QuotaLimit.tenant_id == tenant_id, QuotaLimit.region == self.region
                )
            )
        }
        usage = {
            row.resource: row.used
            for row in await uow.session.scalars(
                select(QuotaUsage).where(
                    QuotaUsage.tenant_id == tenant_id, QuotaUsage.region == self.region
                )
            )
        }
        return {
            "tenant_id": tenant_id,
            "region": self.region,
            "quotas": {
                name: {
                    "limit": limits.get(name, self.defaults[name]),
                    "usage": usage.get(name, 0),
                    "default": name not in limits,
                }
                for name in QUOTA_RESOURCES
            },
        }

    async def set_limits(
        self, ctx: RequestContext, tenant_id: str, limits: dict[str, int | None]
    ) -> dict[str, Any]:
        """Admins override limits; ``None`` returns a quota to the default. Lowering below
        usage is allowed and touches no existing resource."""
        authz.require(ctx, "quota:update", tenant_id=tenant_id, kind="tenant", ident=tenant_id)
        if not ctx.principal.is_platform_admin:
            raise PermissionDenied(
                "quotas are set by platform administrators", extra={"permission": "quota:update"}
            )
        for name, value in limits.items():
            if name not in QUOTA_RESOURCES:
                raise InvalidRequest.for_field(
                    name, f"unknown quota; known: {', '.join(QUOTA_RESOURCES)}"
                )
            if value is not None and value < UNLIMITED:
                raise InvalidRequest.for_field(name, "must be >= 0, or -1 for unlimited")
        async with self.db.uow() as uow:
            if await uow.session.get(Tenant, tenant_id) is None:
                raise NotFound.resource("tenant", tenant_id)
            for name, value in limits.items():
                row = await uow.session.get(QuotaLimit, (tenant_id, self.region, name))
                if value is None:
                    if row is not None:
                        await uow.session.delete(row)
                elif row is None:
                    uow.session.add(
                        QuotaLimit(
                            tenant_id=tenant_id, region=self.region, resource=name, limit=value
                        )
                    )
                else:
                    row.limit = value
            await uow.flush()
            ctx.audit.resource_type = "quota"
            ctx.audit.resource_id = tenant_id
            ctx.audit.details = {"tenant_id": tenant_id, "limits": limits}
            view = await self._view(uow, tenant_id)
            await uow.commit()
        return view
