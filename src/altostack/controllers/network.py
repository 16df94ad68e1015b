"""Operations of the virtual network's control plane.

A VPC or subnet becomes ``available`` once recorded: hosts get its bridge, VXLAN device
and filter when a port of it lands there (agents converge per port), so there is nothing
to wait for yet. Deletes remove the rows (the subnet's gateway address with it, the
VPC's security groups with it) and give the quota back. Each step is idempotent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete

from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.db.database import Database
from altostack.db.models_network import (
    IpAllocation,
    PublicIpAllocation,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Vpc,
)
from altostack.services.quotas import QuotaService


class NetworkController:
    def __init__(
        self,
        db: Database,
        quotas: QuotaService,
        *,
        sync: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self.db = db
        self.quotas = quotas
        self.sync = sync
        """Pushes a VPC to its hosts (``NetworkSyncController.sync_vpc``): a subnet
        changes the router, a deleted VPC leaves every host."""

    def register(self, registry: OperationRegistry) -> None:
        registry.register("vpc.create", self.create_vpc)
        registry.register("vpc.delete", self.delete_vpc)
        registry.register("subnet.create", self.create_subnet)
        registry.register("subnet.delete", self.delete_subnet)

    async def create_vpc(self, ctx: OperationContext) -> dict[str, Any] | None:
        async with self.db.uow() as uow:
            vpc = await uow.session.get(Vpc, ctx.resource_id)
            if vpc is not None and vpc.state == "creating":
                vpc.state = "available"
            await uow.commit()
        return {"vpc_id": ctx.resource_id}

    async def delete_vpc(self, ctx: OperationContext) -> dict[str, Any] | None:
        async with self.db.uow() as uow:
            vpc = await uow.session.get(Vpc, ctx.resource_id)
            if vpc is None:
                return {"vpc_id": ctx.resource_id}  # a retry after the commit below
        if self.sync is not None:
            await self.sync(vpc.id)  # state "deleting": off every host it was on
        async with self.db.uow() as uow:
            vpc = await uow.session.get(Vpc, ctx.resource_id)
            if vpc is None:
                return {"vpc_id": ctx.resource_id}
            await uow.session.execute(
                delete(PublicIpAllocation).where(PublicIpAllocation.owner_id == vpc.id)
            )
            groups = SecurityGroup.vpc_id == vpc.id
            await uow.session.execute(
                delete(SecurityGroupRule).where(
                    SecurityGroupRule.group_id.in_(
                        SecurityGroup.__table__.select()
                        .with_only_columns(SecurityGroup.id)
                        .where(groups)
                    )
                )
            )
            await uow.session.execute(delete(SecurityGroup).where(groups))
            await uow.session.delete(vpc)
            await self.quotas.release(uow, vpc.tenant_id, "vpcs")
            await uow.commit()
        return {"vpc_id": ctx.resource_id}

    async def create_subnet(self, ctx: OperationContext) -> dict[str, Any] | None:
        async with self.db.uow() as uow:
            subnet = await uow.session.get(Subnet, ctx.resource_id)
            if subnet is not None and subnet.state == "creating":
                subnet.state = "available"
            await uow.commit()
        if subnet is not None and self.sync is not None:
            await self.sync(subnet.vpc_id)
        return {"subnet_id": ctx.resource_id}

    async def delete_subnet(self, ctx: OperationContext) -> dict[str, Any] | None:
        async with self.db.uow() as uow:
            subnet = await uow.session.get(Subnet, ctx.resource_id)
            if subnet is None:
                return {"subnet_id": ctx.resource_id}
            await uow.session.execute(
                delete(IpAllocation).where(IpAllocation.subnet_id == subnet.id)
            )
            await uow.session.delete(subnet)
            await self.quotas.release(uow, subnet.tenant_id, "subnets")
            await uow.commit()
        if self.sync is not None:
            await self.sync(subnet.vpc_id)
        return {"subnet_id": ctx.resource_id}
