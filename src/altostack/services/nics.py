"""NICs: a VM's primary NIC (made with the VM) and elastic NICs (attach, detach, move).

A NIC owns one address of one subnet (IPAM row owned by the NIC), a MAC generated once,
and its security groups (the VPC's default group unless given). Moving an elastic NIC
is detach + attach: MAC and address stay. A VM has at most :data:`MAX_NICS_PER_VM`
NICs: attaching takes a free slot under the unique (vm, slot) key, so racing attaches
cannot exceed it. Every change that the hosts must see queues a push
(:mod:`altostack.services.netsync`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from altostack.db.database import Database
from altostack.db.models_compute import Vm
from altostack.db.models_network import Eip, NatRule, Nic, SecurityGroup, Subnet
from altostack.db.repositories import page_of
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, NotFound
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.netsync import bump, queue_push
from altostack.services.network import NetworkService, _filters, _load
from altostack.services.operations import OperationService, operation_view
from altostack.services.quotas import QuotaService

MAX_NICS_PER_VM = 6
MAX_GROUPS_PER_NIC = 5
ATTACHABLE_VM_STATES = ("running", "stopped")
_ATTEMPTS = 16


def nic_view(nic: Nic) -> dict[str, Any]:
    return {
        "id": nic.id,
        "tenant_id": nic.tenant_id,
        "name": nic.name,
        "vpc_id": nic.vpc_id,
        "subnet_id": nic.subnet_id,
        "mac": nic.mac,
        "private_ip": nic.private_ip,
        "security_group_ids": list(nic.security_group_ids or []),
        "primary": nic.primary,
        "vm_id": nic.vm_id,
        "device_index": nic.slot,
        "state": nic.state,
        "created_at": nic.created_at,
    }


def visible(ctx: RequestContext, tenant_id: str) -> bool:
    """Whether the caller may name another resource of ``tenant_id`` in a request."""
    return authz.visible(ctx.principal, tenant_id)


def new_mac() -> str:
    """A locally administered unicast MAC (02:…); the unique key catches the rare clash."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


class NicService:
    def __init__(
        self,
        db: Database,
        operations: OperationService,
        quotas: QuotaService,
        network: NetworkService,
    ) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.network = network

    # -- the primary NIC of new VMs (called inside VmService.create's transaction) ------------

    async def add_primary(
        self, uow: UnitOfWork, ctx: RequestContext, req: dict[str, Any], vms: Sequence[Vm]
    ) -> None:
        """A primary NIC per VM of the batch in a constant number of statements: one read
        of the subnet's taken addresses, one INSERT of the allocations, one of the NICs,
        one UPDATE of the VMs' ``private_ip`` and one of the VPC's generation."""
        subnet = await self._subnet_field(uow, ctx, str(req["subnet_id"]))
        groups = await self.groups_of(
            uow, ctx, subnet.vpc_id, req.get("security_group_ids"), "security_group_ids"
        )
        nic_ids = [new_id("nic") for _ in vms]
        ips = await self.network.allocate_many(uow, subnet, "nic", nic_ids)
        now = utcnow()
        conn = await uow.session.connection()
        await conn.execute(
            insert(cast(Table, Nic.__table__)),
            [
                dict(
                    id=nic_id,
                    tenant_id=vm.tenant_id,
                    vpc_id=subnet.vpc_id,
                    subnet_id=subnet.id,
                    name=None,
                    mac=new_mac(),
                    private_ip=ip,
                    security_group_ids=groups,
                    primary=True,
                    vm_id=vm.id,
                    slot=0,
                    state="bound",
                    created_at=now,
                )
                for nic_id, vm, ip in zip(nic_ids, vms, ips, strict=True)
            ],
        )
        table = cast(Table, Vm.__table__)
        await conn.execute(
            update(table)
            .where(table.c.id == bindparam("vm_id"))
            .values(private_ip=bindparam("ip"), subnet_id=subnet.id),
            [{"vm_id": vm.id, "ip": ip} for vm, ip in zip(vms, ips, strict=True)],
        )
        for vm, ip in zip(vms, ips, strict=True):
            vm.__dict__["private_ip"] = ip
        await bump(uow, [subnet.vpc_id])

    async def _subnet_field(self, uow: UnitOfWork, ctx: RequestContext, subnet_id: str) -> Subnet:
        try:
            subnet = await self.network.load_subnet(uow, ctx, subnet_id, "subnet:read")
        except NotFound:
            raise InvalidRequest.for_field("subnet_id", f"no subnet {subnet_id!r}") from None
        if subnet.state not in ("available", "creating"):
            raise Conflict(
                f"subnet {subnet.id} is {subnet.state}", extra={"current_state": subnet.state}
            )
        return subnet

    async def groups_of(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        vpc_id: str,
        wanted: Sequence[str] | None,
        field: str,
    ) -> list[str]:
        """The groups asked for (each of this VPC and visible), else the default group."""
        if wanted:
            ids = list(dict.fromkeys(wanted))
            if len(ids) > MAX_GROUPS_PER_NIC:
                raise InvalidRequest.for_field(field, f"at most {MAX_GROUPS_PER_NIC} groups")
            rows = (
                await uow.session.scalars(select(SecurityGroup).where(SecurityGroup.id.in_(ids)))
            ).all()
            found = {g.id: g for g in rows if visible(ctx, g.tenant_id)}
            for gid in ids:
                group = found.get(gid)
                if group is None:
                    raise InvalidRequest.for_field(field, f"no security group {gid!r}")
                if group.vpc_id != vpc_id:
                    raise InvalidRequest.for_field(
                        field, f"{gid} belongs to VPC {group.vpc_id}, not {vpc_id}"
                    )
            return ids
        default = await uow.session.scalar(
            select(SecurityGroup.id).where(
                SecurityGroup.vpc_id == vpc_id, SecurityGroup.is_default.is_(True)
            )
        )
        return [default] if default else []

    async def release_for_vm(self, uow: UnitOfWork, ctx: RequestContext, vm: Vm) -> None:
        """A VM going away: its primary NIC and address are freed, elastic NICs detached
        (kept, with their addresses), EIPs on the primary NIC unbound, its NAT rules
        removed; the VPCs are pushed."""
        nics = (await uow.session.scalars(select(Nic).where(Nic.vm_id == vm.id))).all()
        if not nics:
            return
        vpcs = {n.vpc_id for n in nics}
        # PRODUCT: deleting a VM takes it out of NAT whitelists and port mappings.
        await uow.session.execute(delete(NatRule).where(NatRule.vm_id == vm.id))
        for nic in nics:
            if nic.primary:
                await uow.session.execute(
                    update(Eip)
                    .where(Eip.nic_id == nic.id)
                    .values(nic_id=None, vpc_id=None, state="unbound")
                    .execution_options(synchronize_session=False)
                )
                await self.network.release_ips(uow, nic.id)
                await uow.session.delete(nic)
            else:
                nic.vm_id, nic.slot, nic.state = None, None, "unbound"
        vm.private_ip = None
        await queue_push(
            uow,
            self.operations,
            ctx,
            vpcs,
            resource_type="vm",
            resource_id=vm.id,
            tenant_id=vm.tenant_id,
        )

    # -- elastic NICs ------------------------------------------------------------------------

    async def create(
        self,
        ctx: RequestContext,
        *,
        subnet_id: str,
        name: str | None = None,
        private_ip: str | None = None,
        security_group_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        authz.require(ctx, "nic:create")
        async with self.db.uow() as uow:
            subnet = await self._subnet_field(uow, ctx, subnet_id)
            groups = await self.groups_of(
                uow, ctx, subnet.vpc_id, security_group_ids, "security_group_ids"
            )
            await self.quotas.consume(uow, subnet.tenant_id, "nics")
            nic_id = new_id("nic")
            ip = await self.network.allocate_ip(uow, subnet, "nic", nic_id, private_ip)
            nic = Nic(
                id=nic_id,
                tenant_id=subnet.tenant_id,
                vpc_id=subnet.vpc_id,
                subnet_id=subnet.id,
                name=name,
                mac=new_mac(),
                private_ip=ip,
                security_group_ids=groups,
                primary=False,
                vm_id=None,
                slot=None,
                state="unbound",
            )
            uow.session.add(nic)
            ctx.audit.resource_id = nic.id
            await uow.commit()
        return nic_view(nic)

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, nic_id: str, perm: str, *, lock: bool = False
    ) -> Nic:
        return await _load(uow, ctx, Nic, nic_id, perm, "NIC", lock=lock)

    async def get(self, ctx: RequestContext, nic_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return nic_view(await self.load(uow, ctx, nic_id, "nic:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        vm_id: str | None = None,
        subnet_id: str | None = None,
        vpc_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        authz.require(ctx, "nic:read")
        where: list[ColumnElement[bool]] = _filters(
            ctx, Nic, tenant_id, vm_id=vm_id, subnet_id=subnet_id, vpc_id=vpc_id
        )
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, Nic, where, limit=limit, cursor=cursor)
        return [nic_view(n) for n in page.items], page.next_cursor

    async def update(
        self, ctx: RequestContext, nic_id: str, security_group_ids: Sequence[str]
    ) -> dict[str, Any]:
        """New security groups for the NIC; a bound NIC's host gets them at once."""
        async with self.db.uow() as uow:
            nic = await self.load(uow, ctx, nic_id, "nic:update")
            nic.security_group_ids = await self.groups_of(
                uow, ctx, nic.vpc_id, security_group_ids, "security_group_ids"
            )
            if nic.vm_id is not None:
                await queue_push(uow, self.operations, ctx, [nic.vpc_id])
            await uow.commit()
        return nic_view(nic)

    async def delete(self, ctx: RequestContext, nic_id: str) -> None:
        async with self.db.uow() as uow:
            nic = await self.load(uow, ctx, nic_id, "nic:delete", lock=True)
            if nic.primary:
                raise Conflict(f"{nic.id} is the primary NIC of VM {nic.vm_id}; it goes with it")
            if nic.vm_id is not None:
                raise Conflict(
                    f"NIC {nic.id} is {nic.state} (attached to VM {nic.vm_id}); detach it first",
                    extra={"current_state": nic.state},
                )
            eip = await uow.session.scalar(select(Eip.id).where(Eip.nic_id == nic.id))
            if eip is not None:
                raise Conflict(f"elastic IP {eip} is bound to NIC {nic.id}; unbind it first")
            await self.network.release_ips(uow, nic.id)
            await uow.session.delete(nic)
            await self.quotas.release(uow, nic.tenant_id, "nics")
            await uow.commit()

    async def attach(self, ctx: RequestContext, nic_id: str, vm_id: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            nic = await self.load(uow, ctx, nic_id, "nic:update")
            if nic.vm_id is not None:
                raise Conflict(
                    f"NIC {nic.id} is {nic.state} (attached to VM {nic.vm_id}); detach it first",
                    extra={"current_state": nic.state},
                )
            vm = await self._vm_field(uow, ctx, vm_id)
            slot = await self._take_slot(uow, nic, vm)
            op = await queue_push(
                uow, self.operations, ctx, [nic.vpc_id], kind="nic.attach",
                resource_type="nic", resource_id=nic.id, extra={"vm_id": vm.id},
            )  # fmt: skip
            await uow.commit()
        view = nic_view(nic) | {"vm_id": vm.id, "device_index": slot, "state": "bound"}
        return {"operation": operation_view(op), "nic": view}

    async def _vm_field(self, uow: UnitOfWork, ctx: RequestContext, vm_id: str) -> Vm:
        vm = await uow.session.get(Vm, vm_id)
        if vm is None or vm.state == "deleted" or not visible(ctx, vm.tenant_id):
            raise InvalidRequest.for_field("vm_id", f"no VM {vm_id!r}")
        if vm.state not in ATTACHABLE_VM_STATES:
            raise Conflict(
                f"VM {vm.id} is {vm.state}; NICs attach to running or stopped VMs",
                extra={"current_state": vm.state},
            )
        return vm

    async def _take_slot(self, uow: UnitOfWork, nic: Nic, vm: Vm) -> int:
        """The lowest free slot of the VM, under the (vm, slot) key; a racing attach of the
        same NIC finds it bound (no row updated) and gets a 409."""
        for _ in range(_ATTEMPTS):
            taken = set(
                (await uow.session.scalars(select(Nic.slot).where(Nic.vm_id == vm.id))).all()
            )
            free = [s for s in range(MAX_NICS_PER_VM) if s not in taken]
            if not free:
                raise Conflict(
                    f"VM {vm.id} already has {MAX_NICS_PER_VM} NICs, the most a VM can have"
                )
            try:
                async with uow.session.begin_nested():
                    result = await uow.session.execute(
                        update(Nic)
                        .where(Nic.id == nic.id, Nic.vm_id.is_(None))
                        .values(vm_id=vm.id, slot=free[0], state="bound")
                        .execution_options(synchronize_session=False)
                    )
            except IntegrityError:
                continue
            if not getattr(result, "rowcount", 0):
                raise Conflict(
                    f"NIC {nic.id} was attached meanwhile", extra={"current_state": "bound"}
                )
            return free[0]
        raise Conflict(f"VM {vm.id} is too busy attaching NICs; retry")

    async def detach(self, ctx: RequestContext, nic_id: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            nic = await self.load(uow, ctx, nic_id, "nic:update", lock=True)
            if nic.vm_id is None:
                raise Conflict(
                    f"NIC {nic.id} is {nic.state}: attached to no VM",
                    extra={"current_state": nic.state},
                )
            if nic.primary:
                raise Conflict(
                    f"{nic.id} is the primary NIC of VM {nic.vm_id}; it cannot be detached",
                    extra={"current_state": nic.state},
                )
            vm_id = nic.vm_id
            nic.vm_id, nic.slot, nic.state = None, None, "unbound"
            op = await queue_push(
                uow, self.operations, ctx, [nic.vpc_id], kind="nic.detach",
                resource_type="nic", resource_id=nic.id, extra={"vm_id": vm_id},
            )  # fmt: skip
            await uow.commit()
        return {"operation": operation_view(op), "nic": nic_view(nic)}
