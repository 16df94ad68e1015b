"""NAT gateways of a VPC: SNAT for whole subnets or chosen VMs, DNAT port mappings.

A gateway translates through its elastic IP (bound at create or later with
``/v1/eips/{id}/actions/bind {"nat_gateway_id"}``); rules of a gateway without an EIP
wait for one. Uniqueness is a key, so racing duplicates are 409s too: one SNAT rule per
subnet or VM across the VPC's gateways, one DNAT mapping per public port and protocol of
a gateway. Every change queues a push of the VPC to its network host.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from altostack.db.database import Database
from altostack.db.models_compute import Vm
from altostack.db.models_network import Eip, NatGateway, NatRule, Nic, Subnet
from altostack.db.repositories import page_of
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.eips import EipService
from altostack.services.netsync import queue_push
from altostack.services.network import NetworkService, _filters, _load, _unique_name
from altostack.services.operations import OperationService, operation_view
from altostack.services.quotas import QuotaService

MAX_RULES_PER_GATEWAY = 100


def rule_view(rule: NatRule) -> dict[str, Any]:
    view: dict[str, Any] = {"id": rule.id, "kind": rule.kind, "created_at": rule.created_at}
    if rule.kind == "snat":
        view |= {"subnet_id": rule.subnet_id, "vm_id": rule.vm_id}
    else:
        view |= {
            "protocol": rule.protocol,
            "public_port": rule.public_port,
            "vm_id": rule.vm_id,
            "private_port": rule.private_port,
        }
    return view


def nat_view(nat: NatGateway, eip: Eip | None, rules: list[NatRule]) -> dict[str, Any]:
    return {
        "id": nat.id,
        "tenant_id": nat.tenant_id,
        "vpc_id": nat.vpc_id,
        "name": nat.name,
        "state": nat.state,
        "eip_id": eip.id if eip else None,
        "public_ip": eip.address if eip else None,
        "snat_rules": [rule_view(r) for r in rules if r.kind == "snat"],
        "dnat_rules": [rule_view(r) for r in rules if r.kind == "dnat"],
        "created_at": nat.created_at,
    }


class NatGatewayService:
    def __init__(
        self,
        db: Database,
        operations: OperationService,
        quotas: QuotaService,
        network: NetworkService,
        eips: EipService,
    ) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.network = network
        self.eips = eips

    async def create(
        self, ctx: RequestContext, *, vpc_id: str, name: str, eip_id: str | None = None
    ) -> dict[str, Any]:
        authz.require(ctx, "nat-gateway:create")
        async with self.db.uow() as uow:
            vpc = await self.network.load_vpc(uow, ctx, vpc_id, "vpc:read")
            await _unique_name(uow, NatGateway, NatGateway.vpc_id == vpc.id, name, "NAT gateway")
            await self.quotas.consume(uow, vpc.tenant_id, "nat_gateways")
            nat = NatGateway(
                id=new_id("nat"), tenant_id=vpc.tenant_id, vpc_id=vpc.id, name=name,
                state="creating",
            )  # fmt: skip
            uow.session.add(nat)
            await uow.flush()
            eip = None
            if eip_id:
                try:
                    eip = await self.eips.load(uow, ctx, eip_id, "eip:update")
                except Exception:
                    raise InvalidRequest.for_field("eip_id", f"no elastic IP {eip_id!r}") from None
                await self.eips.bind_in(uow, eip, nat_gateway_id=nat.id, vpc_id=vpc.id)
            op = await queue_push(
                uow, self.operations, ctx, [vpc.id], kind="nat_gateway.create",
                resource_type="nat_gateway", resource_id=nat.id,
            )  # fmt: skip
            ctx.audit.resource_id = nat.id
            await uow.commit()
        return {"operation": operation_view(op), "nat_gateway": nat_view(nat, eip, [])}

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, nat_id: str, perm: str
    ) -> NatGateway:
        return await _load(uow, ctx, NatGateway, nat_id, perm, "NAT gateway")

    async def _view(self, uow: UnitOfWork, nat: NatGateway) -> dict[str, Any]:
        eip = await uow.session.scalar(select(Eip).where(Eip.nat_gateway_id == nat.id))
        rules = (
            await uow.session.scalars(
                select(NatRule).where(NatRule.nat_gateway_id == nat.id).order_by(NatRule.id)
            )
        ).all()
        return nat_view(nat, eip, list(rules))

    async def get(self, ctx: RequestContext, nat_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return await self._view(uow, await self.load(uow, ctx, nat_id, "nat-gateway:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        vpc_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        authz.require(ctx, "nat-gateway:read")
        where = _filters(ctx, NatGateway, tenant_id, vpc_id=vpc_id)
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, NatGateway, where, limit=limit, cursor=cursor)
            items = [await self._view(uow, n) for n in page.items]
        return items, page.next_cursor

    async def delete(self, ctx: RequestContext, nat_id: str) -> dict[str, Any]:
        """The gateway, its rules and its EIP's binding go now; the push removes the NAT
        from the router."""
        async with self.db.uow() as uow:
            nat = await self.load(uow, ctx, nat_id, "nat-gateway:delete")
            view = await self._view(uow, nat)
            await uow.session.execute(
                update(Eip)
                .where(Eip.nat_gateway_id == nat.id)
                .values(state="unbound", nat_gateway_id=None, vpc_id=None)
                .execution_options(synchronize_session=False)
            )
            await uow.session.execute(delete(NatRule).where(NatRule.nat_gateway_id == nat.id))
            await uow.session.delete(nat)
            await self.quotas.release(uow, nat.tenant_id, "nat_gateways")
            op = await queue_push(
                uow, self.operations, ctx, [nat.vpc_id], kind="nat_gateway.delete",
                resource_type="nat_gateway", resource_id=nat.id,
            )  # fmt: skip
            await uow.commit()
        return {"operation": operation_view(op), "nat_gateway": view | {"state": "deleting"}}

    async def add_rule(
        self, ctx: RequestContext, nat_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        kind = body["kind"]
        async with self.db.uow() as uow:
            nat = await self.load(uow, ctx, nat_id, "nat-gateway:update")
            count = len(
                (await uow.session.scalars(
                    select(NatRule.id).where(NatRule.nat_gateway_id == nat.id)
                )).all()
            )  # fmt: skip
            if count >= MAX_RULES_PER_GATEWAY:
                raise Conflict(f"NAT gateway {nat.id} already has {MAX_RULES_PER_GATEWAY} rules")
            rule = NatRule(
                id=new_id("natr"), nat_gateway_id=nat.id, tenant_id=nat.tenant_id,
                vpc_id=nat.vpc_id, kind=kind,
            )  # fmt: skip
            if kind == "snat":
                await self._snat(uow, ctx, nat, rule, body)
            else:
                await self._dnat(uow, ctx, nat, rule, body)
            try:
                async with uow.session.begin_nested():
                    uow.session.add(rule)
            except IntegrityError:
                raise Conflict(self._duplicate(rule)) from None
            await queue_push(
                uow, self.operations, ctx, [nat.vpc_id], kind="nat_gateway.update",
                resource_type="nat_gateway", resource_id=nat.id,
            )  # fmt: skip
            await uow.commit()
        return rule_view(rule)

    @staticmethod
    def _duplicate(rule: NatRule) -> str:
        if rule.kind == "dnat":
            return (
                f"public port {rule.protocol}/{rule.public_port} of NAT gateway "
                f"{rule.nat_gateway_id} is already mapped"
            )
        return f"{rule.subnet_id or rule.vm_id} already has a SNAT rule in this VPC"

    async def _snat(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        nat: NatGateway,
        rule: NatRule,
        body: dict[str, Any],
    ) -> None:
        subnet_id, vm_id = body.get("subnet_id"), body.get("vm_id")
        if bool(subnet_id) == bool(vm_id):
            raise InvalidRequest.for_field("subnet_id", "give subnet_id or vm_id (one of them)")
        if subnet_id:
            subnet = await uow.session.get(Subnet, subnet_id)
            if subnet is None or not authz.visible(ctx.principal, subnet.tenant_id):
                raise InvalidRequest.for_field("subnet_id", f"no subnet {subnet_id!r}")
            if subnet.vpc_id != nat.vpc_id:
                raise InvalidRequest.for_field(
                    "subnet_id", f"{subnet.id} is in VPC {subnet.vpc_id}, not {nat.vpc_id}"
                )
            rule.subnet_id, rule.source_key = subnet.id, subnet.id
        else:
            await self._vm_in_vpc(uow, ctx, nat, str(vm_id))
            rule.vm_id, rule.source_key = vm_id, str(vm_id)

    async def _dnat(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        nat: NatGateway,
        rule: NatRule,
        body: dict[str, Any],
    ) -> None:
        vm_id = str(body["vm_id"])
        await self._vm_in_vpc(uow, ctx, nat, vm_id)
        protocol, public_port = body.get("protocol", "tcp"), int(body["public_port"])
        rule.vm_id, rule.protocol = vm_id, protocol
        rule.public_port, rule.private_port = public_port, int(body["private_port"])
        rule.source_key = f"dnat/{nat.id}/{protocol}/{public_port}"
        taken = await uow.session.scalar(
            select(NatRule.id).where(
                NatRule.vpc_id == nat.vpc_id, NatRule.source_key == rule.source_key
            )
        )
        if taken is not None:
            raise Conflict(self._duplicate(rule) + f" (rule {taken})")

    async def _vm_in_vpc(
        self, uow: UnitOfWork, ctx: RequestContext, nat: NatGateway, vm_id: str
    ) -> None:
        vm = await uow.session.get(Vm, vm_id)
        if vm is None or vm.state == "deleted" or not authz.visible(ctx.principal, vm.tenant_id):
            raise InvalidRequest.for_field("vm_id", f"no VM {vm_id!r}")
        nic = await uow.session.scalar(
            select(Nic.id).where(Nic.vm_id == vm.id, Nic.vpc_id == nat.vpc_id).limit(1)
        )
        if nic is None:
            raise InvalidRequest.for_field("vm_id", f"VM {vm.id} has no NIC in VPC {nat.vpc_id}")

    async def delete_rule(self, ctx: RequestContext, nat_id: str, rule_id: str) -> None:
        async with self.db.uow() as uow:
            nat = await self.load(uow, ctx, nat_id, "nat-gateway:update")
            rule = await uow.session.get(NatRule, rule_id)
            if rule is None or rule.nat_gateway_id != nat.id:
                from altostack.domain.errors import NotFound

                raise NotFound(f"NAT gateway {nat.id} has no rule {rule_id}")
            await uow.session.delete(rule)
            await queue_push(
                uow, self.operations, ctx, [nat.vpc_id], kind="nat_gateway.update",
                resource_type="nat_gateway", resource_id=nat.id,
            )  # fmt: skip
            await uow.commit()
