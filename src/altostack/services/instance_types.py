"""Instance types: the specifications administrators offer (vCPUs, memory, disk range)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from altostack.db.database import Database
from altostack.db.models_compute import InstanceType
from altostack.domain.errors import Conflict, InvalidRequest, NotFound
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext

NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


def itype_view(t: InstanceType) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "vcpus": t.vcpus,
        "memory_mib": t.memory_mib,
        "min_disk_gib": t.min_disk_gib,
        "max_disk_gib": t.max_disk_gib,
        "gpus": t.gpus,
        "description": t.description,
        "enabled": t.enabled,
        "created_at": t.created_at,
    }


class InstanceTypeService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, ctx: RequestContext, **fields: Any) -> dict[str, Any]:
        authz.require(ctx, "instance-type:create")
        if not NAME.match(fields["name"]):
            raise InvalidRequest.for_field(
                "name", "lower case, digits, '.' and '-' (e.g. c1.small)"
            )
        if fields["min_disk_gib"] > fields["max_disk_gib"]:
            raise InvalidRequest.for_field("min_disk_gib", "must not exceed max_disk_gib")
        if fields["gpus"] and fields["vcpus"] < 4 * fields["gpus"]:
            raise InvalidRequest.for_field("vcpus", "GPU types need at least 4 vCPUs per GPU")
        async with self.db.uow() as uow:
            if await uow.session.scalar(
                select(InstanceType).where(InstanceType.name == fields["name"])
            ):
                raise Conflict(f"an instance type named {fields['name']!r} already exists")
            itype = InstanceType(id=new_id("itype"), enabled=True, **fields)
            uow.session.add(itype)
            await uow.commit()
        return itype_view(itype)

    async def list(self, ctx: RequestContext, *, include_disabled: bool) -> list[dict[str, Any]]:
        authz.require(ctx, "instance-type:read")
        async with self.db.uow(write=False) as uow:
            stmt = select(InstanceType).order_by(InstanceType.vcpus, InstanceType.memory_mib)
            if not (include_disabled and ctx.principal.is_platform_admin):
                stmt = stmt.where(InstanceType.enabled.is_(True))
            return [itype_view(t) for t in await uow.session.scalars(stmt)]

    async def get(self, ctx: RequestContext, ref: str) -> dict[str, Any]:
        authz.require(ctx, "instance-type:read")
        async with self.db.uow(write=False) as uow:
            itype = await self.resolve(uow.session, ref)
        if itype is None:
            raise NotFound.resource("instance type", ref)
        return itype_view(itype)

    @staticmethod
    async def resolve(session: Any, ref: str) -> InstanceType | None:
        """By id or by name: users say ``c1.small``, scripts may keep the id."""
        column = InstanceType.id if ref.startswith("itype-") else InstanceType.name
        result: InstanceType | None = await session.scalar(
            select(InstanceType).where(column == ref)
        )
        return result

    async def set_enabled(self, ctx: RequestContext, ref: str, enabled: bool) -> dict[str, Any]:
        authz.require(ctx, "instance-type:update")
        async with self.db.uow() as uow:
            itype = await self.resolve(uow.session, ref)
            if itype is None:
                raise NotFound.resource("instance type", ref)
            itype.enabled = enabled
            await uow.commit()
        return itype_view(itype)

    async def delete(self, ctx: RequestContext, ref: str) -> None:
        """Existing VMs keep their copied size; only new VMs lose the choice."""
        authz.require(ctx, "instance-type:delete")
        async with self.db.uow() as uow:
            itype = await self.resolve(uow.session, ref)
            if itype is None:
                raise NotFound.resource("instance type", ref)
            await uow.session.delete(itype)
            await uow.commit()
