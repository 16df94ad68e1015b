"""Public IP pools (admin) and elastic IPs (tenants): allocate, bind, unbind, release.

A pool is a region's external network: its CIDR, the upstream gateway and the range
addresses come from. Every public address in use, an EIP's or a VPC router's own, is a
row of ``public_ip_allocations`` keyed by (pool, address), so two tenants can never get
one address however allocations race: the loser of an INSERT takes the next address.
Binding is a conditional UPDATE (only an unbound EIP binds) under unique keys (one EIP
per NIC, one per NAT gateway), and each bind or unbind queues a push of the VPC.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from altostack.db.database import Database
from altostack.db.models_compute import Vm
from altostack.db.models_network import Eip, IpPool, NatGateway, Nic, PublicIpAllocation
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, NotFound
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.netsync import queue_push
from altostack.services.network import _filters, _load
from altostack.services.operations import OperationService, operation_view
from altostack.services.quotas import QuotaService

_ATTEMPTS = 32
MAX_BANDWIDTH_MBPS = 10000


def pool_view(pool: IpPool) -> dict[str, Any]:
    return {
        "id": pool.id,
        "region": pool.region,
        "name": pool.name,
        "cidr": pool.cidr,
        "gateway_ip": pool.gateway_ip,
        "range_start": pool.range_start,
        "range_end": pool.range_end,
        "created_at": pool.created_at,
    }


def eip_view(eip: Eip) -> dict[str, Any]:
    return {
        "id": eip.id,
        "tenant_id": eip.tenant_id,
        "pool_id": eip.pool_id,
        "address": eip.address,
        "bandwidth_mbps": eip.bandwidth_mbps,
        "state": eip.state,
        "nic_id": eip.nic_id,
        "nat_gateway_id": eip.nat_gateway_id,
        "vpc_id": eip.vpc_id,
        "created_at": eip.created_at,
    }


def _address(field: str, text: str, net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise InvalidRequest.for_field(field, f"{text!r} is not an IP address") from exc
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise InvalidRequest.for_field(field, f"{ip} is not a usable address of {net}")
    assert isinstance(ip, ipaddress.IPv4Address)
    return ip


async def allocate_public(uow: UnitOfWork, pool: IpPool, owner_type: str, owner_id: str) -> str:
    """The lowest free address of the pool's range (savepoint per attempt)."""
    start = ipaddress.IPv4Address(pool.range_start)
    end = ipaddress.IPv4Address(pool.range_end)
    gateway = ipaddress.IPv4Address(pool.gateway_ip)
    for _ in range(_ATTEMPTS):
        taken = set(
            (
                await uow.session.scalars(
                    select(PublicIpAllocation.ip).where(PublicIpAllocation.pool_id == pool.id)
                )
            ).all()
        )
        candidate = next(
            (
                str(ipaddress.IPv4Address(n))
                for n in range(int(start), int(end) + 1)
                if str(ipaddress.IPv4Address(n)) not in taken
                and ipaddress.IPv4Address(n) != gateway
            ),
            None,
        )
        if candidate is None:
            raise Conflict(f"public IP pool {pool.name!r} has no free address left")
        try:
            async with uow.session.begin_nested():
                uow.session.add(
                    PublicIpAllocation(
                        pool_id=pool.id, ip=candidate, owner_type=owner_type, owner_id=owner_id
                    )
                )
        except IntegrityError:
            continue
        return candidate
    raise Conflict(f"public IP pool {pool.name!r} is too busy; retry")


class IpPoolService:
    """Admin-defined public networks of the region."""

    def __init__(self, db: Database, region: str) -> None:
        self.db = db
        self.region = region

    async def create(
        self,
        ctx: RequestContext,
        *,
        name: str,
        cidr: str,
        gateway_ip: str | None = None,
        range_start: str | None = None,
        range_end: str | None = None,
    ) -> dict[str, Any]:
        authz.require(ctx, "ip-pool:create")
        async with self.db.uow() as uow:
            pool = await self.add(uow, name, cidr, gateway_ip, range_start, range_end)
            await uow.commit()
        return pool_view(pool)

    async def add(
        self,
        uow: UnitOfWork,
        name: str,
        cidr: str,
        gateway_ip: str | None = None,
        range_start: str | None = None,
        range_end: str | None = None,
    ) -> IpPool:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise InvalidRequest.for_field("cidr", f"{cidr!r} is not a network ({exc})") from exc
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 30:
            raise InvalidRequest.for_field("cidr", "must be an IPv4 network of /30 or larger")
        gateway = _address("gateway_ip", gateway_ip, net) if gateway_ip else net.network_address + 1
        start = _address("range_start", range_start, net) if range_start else gateway + 1
        end = _address("range_end", range_end, net) if range_end else net.broadcast_address - 1
        if start > end:
            raise InvalidRequest.for_field("range_end", "must not be below range_start")
        for other in (
            await uow.session.scalars(select(IpPool).where(IpPool.region == self.region))
        ).all():
            if other.name == name:
                raise Conflict(f"an IP pool named {name!r} already exists ({other.id})")
            if net.overlaps(ipaddress.ip_network(other.cidr)):
                raise Conflict(f"{net} overlaps IP pool {other.id} ({other.cidr})")
        pool = IpPool(
            id=new_id("pool"),
            region=self.region,
            name=name,
            cidr=str(net),
            gateway_ip=str(gateway),
            range_start=str(start),
            range_end=str(end),
        )
        uow.session.add(pool)
        await uow.flush()
        return pool

    async def ensure_default(self, cidr: str) -> None:
        """The all-in-one's public pool (203.0.113.0/24 unless configured), once."""
        async with self.db.uow() as uow:
            if await uow.session.scalar(select(IpPool.id).where(IpPool.region == self.region)):
                return
            await self.add(uow, "public", cidr)
            await uow.commit()

    async def list(self, ctx: RequestContext) -> list[dict[str, Any]]:
        authz.require(ctx, "ip-pool:read")
        async with self.db.uow(write=False) as uow:
            pools = await uow.session.scalars(
                select(IpPool).where(IpPool.region == self.region).order_by(IpPool.id.desc())
            )
            return [pool_view(p) for p in pools]

    async def get(self, ctx: RequestContext, pool_id: str) -> dict[str, Any]:
        authz.require(ctx, "ip-pool:read")
        async with self.db.uow(write=False) as uow:
            pool = await uow.session.get(IpPool, pool_id)
            if pool is None:
                raise NotFound.resource("IP pool", pool_id)
            return pool_view(pool)

    async def delete(self, ctx: RequestContext, pool_id: str) -> None:
        authz.require(ctx, "ip-pool:delete")
        async with self.db.uow() as uow:
            pool = await uow.session.get(IpPool, pool_id)
            if pool is None:
                raise NotFound.resource("IP pool", pool_id)
            used = (
                await uow.session.scalars(
                    select(PublicIpAllocation.owner_id).where(PublicIpAllocation.pool_id == pool.id)
                )
            ).all()
            if used:
                raise Conflict(
                    f"IP pool {pool.id} still has {len(used)} address(es) in use "
                    f"(by {', '.join(sorted(used)[:5])})"
                )
            await uow.session.delete(pool)
            await uow.commit()


class EipService:
    def __init__(
        self, db: Database, operations: OperationService, quotas: QuotaService, region: str
    ) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.region = region

    async def allocate(
        self, ctx: RequestContext, *, bandwidth_mbps: int | None = None, pool_id: str | None = None
    ) -> dict[str, Any]:
        authz.require(ctx, "eip:create")
        self._bandwidth(bandwidth_mbps)
        tenant_id = ctx.principal.tenant_id
        async with self.db.uow() as uow:
            stmt = select(IpPool).where(IpPool.region == self.region).order_by(IpPool.id)
            if pool_id:
                stmt = stmt.where(IpPool.id == pool_id)
            pool = (await uow.session.scalars(stmt.limit(1))).first()
            if pool is None:
                if pool_id:
                    raise InvalidRequest.for_field("pool_id", f"no IP pool {pool_id!r}")
                raise Conflict(f"region {self.region!r} has no public IP pool; ask an admin")
            await self.quotas.consume(uow, tenant_id, "eips")
            eip_id = new_id("eip")
            address = await allocate_public(uow, pool, "eip", eip_id)
            eip = Eip(
                id=eip_id,
                tenant_id=tenant_id,
                pool_id=pool.id,
                address=address,
                bandwidth_mbps=bandwidth_mbps,
                state="unbound",
            )
            uow.session.add(eip)
            op = self.operations.create(
                uow, ctx, "eip.allocate", resource_type="eip", resource_id=eip.id
            )
            await uow.commit()
        return {"operation": operation_view(op), "eip": eip_view(eip)}

    @staticmethod
    def _bandwidth(value: int | None) -> None:
        if value is not None and not 1 <= value <= MAX_BANDWIDTH_MBPS:
            raise InvalidRequest.for_field(
                "bandwidth_mbps", f"must be 1-{MAX_BANDWIDTH_MBPS} (Mbit/s)"
            )

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, eip_id: str, perm: str, *, lock: bool = False
    ) -> Eip:
        return await _load(uow, ctx, Eip, eip_id, perm, "elastic IP", lock=lock)

    async def get(self, ctx: RequestContext, eip_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return eip_view(await self.load(uow, ctx, eip_id, "eip:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        state: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        from altostack.db.repositories import page_of

        authz.require(ctx, "eip:read")
        where = _filters(ctx, Eip, tenant_id, state=state)
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, Eip, where, limit=limit, cursor=cursor)
        return [eip_view(e) for e in page.items], page.next_cursor

    async def update(
        self, ctx: RequestContext, eip_id: str, bandwidth_mbps: int | None
    ) -> dict[str, Any]:
        """A new bandwidth limit (online: the router's shaping follows the push)."""
        self._bandwidth(bandwidth_mbps)
        async with self.db.uow() as uow:
            eip = await self.load(uow, ctx, eip_id, "eip:update")
            eip.bandwidth_mbps = bandwidth_mbps
            if eip.vpc_id:
                await queue_push(uow, self.operations, ctx, [eip.vpc_id])
            await uow.commit()
        return eip_view(eip)

    async def release(self, ctx: RequestContext, eip_id: str) -> None:
        async with self.db.uow() as uow:
            eip = await self.load(uow, ctx, eip_id, "eip:delete", lock=True)
            if eip.state != "unbound":
                raise Conflict(
                    f"elastic IP {eip.id} is {eip.state}; unbind it first",
                    extra={"current_state": eip.state},
                )
            await uow.session.execute(
                delete(PublicIpAllocation).where(PublicIpAllocation.owner_id == eip.id)
            )
            await uow.session.delete(eip)
            await self.quotas.release(uow, eip.tenant_id, "eips")
            await uow.commit()

    async def bind(
        self, ctx: RequestContext, eip_id: str, target: dict[str, Any]
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            eip = await self.load(uow, ctx, eip_id, "eip:update")
            given = [k for k in ("vm_id", "nic_id", "nat_gateway_id") if target.get(k)]
            if len(given) != 1:
                raise InvalidRequest.for_field(
                    "vm_id", "give exactly one of vm_id, nic_id, nat_gateway_id"
                )
            nic_id, nat_id, vpc_id = await self._target(uow, ctx, given[0], str(target[given[0]]))
            await self.bind_in(uow, eip, nic_id=nic_id, nat_gateway_id=nat_id, vpc_id=vpc_id)
            op = await queue_push(
                uow, self.operations, ctx, [vpc_id], kind="eip.bind",
                resource_type="eip", resource_id=eip.id,
            )  # fmt: skip
            await uow.commit()
        return {"operation": operation_view(op), "eip": eip_view(eip)}

    async def _target(
        self, uow: UnitOfWork, ctx: RequestContext, field: str, ident: str
    ) -> tuple[str | None, str | None, str]:
        if field == "nat_gateway_id":
            nat = await uow.session.get(NatGateway, ident)
            if nat is None or not authz.visible(ctx.principal, nat.tenant_id):
                raise InvalidRequest.for_field(field, f"no NAT gateway {ident!r}")
            return None, nat.id, nat.vpc_id
        if field == "vm_id":
            vm = await uow.session.get(Vm, ident)
            if (
                vm is None
                or vm.state == "deleted"
                or not authz.visible(ctx.principal, vm.tenant_id)
            ):
                raise InvalidRequest.for_field(field, f"no VM {ident!r}")
            nic = (
                await uow.session.scalars(
                    select(Nic).where(Nic.vm_id == vm.id).order_by(Nic.slot).limit(1)
                )
            ).first()
            if nic is None:
                raise Conflict(f"VM {vm.id} has no NIC to bind an elastic IP to")
        else:
            nic = await uow.session.get(Nic, ident)
            if nic is None or not authz.visible(ctx.principal, nic.tenant_id):
                raise InvalidRequest.for_field(field, f"no NIC {ident!r}")
        return nic.id, None, nic.vpc_id

    async def bind_in(
        self,
        uow: UnitOfWork,
        eip: Eip,
        *,
        nic_id: str | None = None,
        nat_gateway_id: str | None = None,
        vpc_id: str,
    ) -> None:
        """Bind inside the caller's transaction: only an unbound EIP, one per target."""
        if eip.state != "unbound":
            raise Conflict(
                f"elastic IP {eip.id} is {eip.state} (to {eip.nic_id or eip.nat_gateway_id}); "
                "unbind it first",
                extra={"current_state": eip.state},
            )
        try:
            async with uow.session.begin_nested():
                result = await uow.session.execute(
                    update(Eip)
                    .where(Eip.id == eip.id, Eip.state == "unbound")
                    .values(
                        state="bound", nic_id=nic_id, nat_gateway_id=nat_gateway_id, vpc_id=vpc_id
                    )
                    .execution_options(synchronize_session=False)
                )
        except IntegrityError:
            raise Conflict(
                f"{nic_id or nat_gateway_id} already has an elastic IP; unbind that one first"
            ) from None
        if not getattr(result, "rowcount", 0):
            raise Conflict(
                f"elastic IP {eip.id} was bound meanwhile", extra={"current_state": "bound"}
            )
        eip.state, eip.nic_id, eip.nat_gateway_id, eip.vpc_id = (
            "bound", nic_id, nat_gateway_id, vpc_id,
        )  # fmt: skip

    async def unbind(self, ctx: RequestContext, eip_id: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            eip = await self.load(uow, ctx, eip_id, "eip:update", lock=True)
            if eip.state != "bound":
                raise Conflict(
                    f"elastic IP {eip.id} is {eip.state}: bound to nothing",
                    extra={"current_state": eip.state},
                )
            vpc_id = eip.vpc_id or ""
            eip.state, eip.nic_id, eip.nat_gateway_id, eip.vpc_id = "unbound", None, None, None
            op = await queue_push(
                uow, self.operations, ctx, [vpc_id], kind="eip.unbind",
                resource_type="eip", resource_id=eip.id,
            )  # fmt: skip
            await uow.commit()
        return {"operation": operation_view(op), "eip": eip_view(eip)}
