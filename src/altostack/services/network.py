"""VPCs, subnets and IP address management.

A VPC is a tenant's private address space (overlapping CIDRs between VPCs are fine: each
VPC has its own VXLAN VNI and conntrack zone on the hosts). Subnets carve non-overlapping
ranges out of it. Every address handed out is a row in ``ip_allocations`` keyed by
(subnet, address), so two NICs can never get one address: an automatic allocation picks
the lowest free address and simply tries the next one when a racing INSERT won it.

Creating or deleting a VPC or subnet is an operation (API.md: 202), run by
``controllers/network.py``; the data plane follows when ports land on hosts.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from altostack.db.database import Database
from altostack.db.models_network import (
    IpAllocation,
    NatGateway,
    Nic,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Vpc,
)
from altostack.db.repositories import Page, page_of
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, NotFound
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.netsync import queue_push
from altostack.services.operations import OperationService, operation_view
from altostack.services.quotas import QuotaService

T = TypeVar("T")

VNI_MIN, VNI_MAX = 4096, 2**24 - 1
MIN_PREFIX, MAX_PREFIX = 8, 28
_ALLOCATE_ATTEMPTS = 64


def vpc_view(vpc: Vpc) -> dict[str, Any]:
    return {
        "id": vpc.id,
        "tenant_id": vpc.tenant_id,
        "name": vpc.name,
        "cidr": vpc.cidr,
        "state": vpc.state,
        "generation": vpc.generation,
        "observed_generation": vpc.observed_generation,
        "created_at": vpc.created_at,
    }


def subnet_view(subnet: Subnet, used: int | None = None) -> dict[str, Any]:
    net = ipaddress.ip_network(subnet.cidr)
    usable = net.num_addresses - 3  # network, gateway, broadcast
    view: dict[str, Any] = {
        "id": subnet.id,
        "tenant_id": subnet.tenant_id,
        "vpc_id": subnet.vpc_id,
        "name": subnet.name,
        "cidr": subnet.cidr,
        "gateway_ip": subnet.gateway_ip,
        "dns_servers": list(subnet.dns_servers or []),
        "dhcp": subnet.dhcp,
        "ipv6_prefix": subnet.ipv6_prefix,
        "state": subnet.state,
        "created_at": subnet.created_at,
        "total_ips": usable,
    }
    if used is not None:
        view["available_ips"] = max(0, usable - used)
    return view


def _ipv4_network(field: str, text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidRequest.for_field(
            field, f"{text!r} is not a network in CIDR form such as 10.0.0.0/16 ({exc})"
        ) from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidRequest.for_field(field, "must be an IPv4 network (IPv6 goes in ipv6_prefix)")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidRequest.for_field(
            field, f"prefix length must be between /{MIN_PREFIX} and /{MAX_PREFIX}"
        )
    return net


async def _unique_name(uow: UnitOfWork, model: Any, scope: Any, name: str, kind: str) -> None:
    found = await uow.session.scalar(select(model.id).where(scope, model.name == name))
    if found is not None:
        raise Conflict(f"a {kind} named {name!r} already exists ({found})")


async def _load(
    uow: UnitOfWork,
    ctx: RequestContext,
    model: type[T],
    ident: str,
    perm: str,
    kind: str,
    *,
    lock: bool = False,
) -> T:
    """A tenant-owned row, or the same 404/403 the rest of the API gives."""
    row = await uow.session.get(model, ident, with_for_update=lock or None)
    owner = getattr(row, "tenant_id", None)
    authz.require(ctx, perm, tenant_id=owner, kind=kind, ident=ident)
    assert row is not None
    return row


def _filters(
    ctx: RequestContext, model: Any, tenant_id: str | None, **equal: str | None
) -> list[ColumnElement[bool]]:
    """A list's WHERE: the caller's tenant (admins: any or the one asked for), then each
    field given."""
    where: list[ColumnElement[bool]] = []
    target = authz.tenant_filter(ctx, tenant_id)
    if target:
        where.append(model.tenant_id == target)
    where += [getattr(model, field) == value for field, value in equal.items() if value]
    return where


class NetworkService:
    def __init__(self, db: Database, operations: OperationService, quotas: QuotaService) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas

    # -- VPCs ------------------------------------------------------------------------------

    async def create_vpc(self, ctx: RequestContext, name: str, cidr: str) -> dict[str, Any]:
        authz.require(ctx, "vpc:create")
        net = _ipv4_network("cidr", cidr)
        tenant_id = ctx.principal.tenant_id
        async with self.db.uow() as uow:
            await _unique_name(uow, Vpc, Vpc.tenant_id == tenant_id, name, "VPC")
            await self.quotas.consume(uow, tenant_id, "vpcs")
            vpc = Vpc(
                id=new_id("vpc"),
                tenant_id=tenant_id,
                name=name,
                cidr=str(net),
                vni=await self._free_vni(uow),
                state="creating",
                generation=1,
                observed_generation=0,
                hosts=[],
            )
            uow.session.add(vpc)
            default = SecurityGroup(
                id=new_id("sg"),
                tenant_id=tenant_id,
                vpc_id=vpc.id,
                name="default",
                description="Created with the VPC: members reach each other; all egress",
                is_default=True,
            )
            uow.session.add(default)
            for direction, remote_group in (("ingress", default.id), ("egress", None)):
                uow.session.add(
                    SecurityGroupRule(
                        id=new_id("sgr"),
                        group_id=default.id,
                        tenant_id=tenant_id,
                        direction=direction,
                        protocol="any",
                        remote_group_id=remote_group,
                        action="allow",
                        priority=100,
                    )
                )
            op = self.operations.create(
                uow, ctx, "vpc.create", resource_type="vpc", resource_id=vpc.id
            )
            await uow.commit()
        return {"operation": operation_view(op), "vpc": vpc_view(vpc)}

    async def _free_vni(self, uow: UnitOfWork) -> int:
        """A random unused VNI; the unique key settles the (rare) race at commit."""
        for _ in range(_ALLOCATE_ATTEMPTS):
            vni = VNI_MIN + secrets.randbelow(VNI_MAX - VNI_MIN)
            if await uow.session.scalar(select(Vpc.id).where(Vpc.vni == vni)) is None:
                return vni
        raise Conflict("no free VXLAN network identifier; the region is full")

    async def load_vpc(
        self, uow: UnitOfWork, ctx: RequestContext, vpc_id: str, perm: str, *, lock: bool = False
    ) -> Vpc:
        # ``lock``: on PostgreSQL the row lock serialises subnet changes of one VPC, so two
        # overlapping subnets cannot both pass the overlap check (SQLite has one writer).
        return await _load(uow, ctx, Vpc, vpc_id, perm, "VPC", lock=lock)

    async def get_vpc(self, ctx: RequestContext, vpc_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return vpc_view(await self.load_vpc(uow, ctx, vpc_id, "vpc:read"))

    async def list_vpcs(
        self,
        ctx: RequestContext,
        *,
        name: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Vpc]:
        authz.require(ctx, "vpc:read")
        where = _filters(ctx, Vpc, tenant_id, name=name)
        async with self.db.uow(write=False) as uow:
            return await page_of(uow.session, Vpc, where, limit=limit, cursor=cursor)

    async def delete_vpc(self, ctx: RequestContext, vpc_id: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            vpc = await self.load_vpc(uow, ctx, vpc_id, "vpc:delete", lock=True)
            subnets = (
                await uow.session.scalars(select(Subnet.id).where(Subnet.vpc_id == vpc.id))
            ).all()
            if subnets:
                raise Conflict(
                    f"VPC {vpc.id} still has {len(subnets)} subnet(s) ({', '.join(subnets)}); "
                    "delete them first"
                )
            nat = await uow.session.scalar(select(NatGateway.id).where(NatGateway.vpc_id == vpc.id))
            if nat is not None:
                raise Conflict(f"VPC {vpc.id} still has NAT gateway {nat}; delete it first")
            if vpc.state == "deleting":
                raise Conflict(f"VPC {vpc.id} is already being deleted")
            vpc.state = "deleting"
            op = self.operations.create(
                uow, ctx, "vpc.delete", resource_type="vpc", resource_id=vpc.id
            )
            await uow.commit()
        return {"operation": operation_view(op), "vpc": vpc_view(vpc)}

    # -- subnets ---------------------------------------------------------------------------

    async def create_subnet(
        self,
        ctx: RequestContext,
        *,
        vpc_id: str,
        name: str,
        cidr: str,
        gateway_ip: str | None = None,
        dns_servers: list[str] | None = None,
        dhcp: bool = True,
        ipv6_prefix: str | None = None,
    ) -> dict[str, Any]:
        authz.require(ctx, "subnet:create")
        net = _ipv4_network("cidr", cidr)
        gateway = self._gateway(net, gateway_ip)
        servers = [self._address("dns_servers", s) for s in dns_servers or []]
        if ipv6_prefix is not None:
            try:
                v6 = ipaddress.ip_network(ipv6_prefix, strict=True)
            except ValueError as exc:
                raise InvalidRequest.for_field("ipv6_prefix", str(exc)) from exc
            if v6.version != 6 or v6.prefixlen != 64:
                raise InvalidRequest.for_field("ipv6_prefix", "must be an IPv6 /64")
        async with self.db.uow() as uow:
            vpc = await self.load_vpc(uow, ctx, vpc_id, "vpc:read", lock=True)
            if vpc.state not in ("available", "creating"):
                raise Conflict(f"VPC {vpc.id} is {vpc.state}; subnets need a live VPC")
            if not net.subnet_of(ipaddress.ip_network(vpc.cidr)):  # type: ignore[arg-type]
                raise InvalidRequest.for_field("cidr", f"{net} is not inside the VPC's {vpc.cidr}")
            siblings = (
                await uow.session.scalars(select(Subnet).where(Subnet.vpc_id == vpc.id))
            ).all()
            for other in siblings:
                if net.overlaps(ipaddress.ip_network(other.cidr)):
                    raise Conflict(f"{net} overlaps subnet {other.id} ({other.cidr}) of this VPC")
                if other.name == name:
                    raise Conflict(
                        f"a subnet named {name!r} already exists in {vpc.id} ({other.id})"
                    )
            await self.quotas.consume(uow, vpc.tenant_id, "subnets")
            subnet = Subnet(
                id=new_id("subnet"),
                tenant_id=vpc.tenant_id,
                vpc_id=vpc.id,
                name=name,
                cidr=str(net),
                gateway_ip=str(gateway),
                dns_servers=servers,
                dhcp=dhcp,
                ipv6_prefix=ipv6_prefix,
                state="creating",
            )
            uow.session.add(subnet)
            uow.session.add(
                IpAllocation(
                    subnet_id=subnet.id, ip=str(gateway), owner_type="gateway", owner_id=subnet.id
                )
            )
            op = self.operations.create(
                uow, ctx, "subnet.create", resource_type="subnet", resource_id=subnet.id
            )
            await uow.commit()
        return {"operation": operation_view(op), "subnet": subnet_view(subnet, used=0)}

    @staticmethod
    def _address(field: str, text: str) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError as exc:
            raise InvalidRequest.for_field(field, f"{text!r} is not an IP address") from exc

    def _gateway(self, net: ipaddress.IPv4Network, gateway_ip: str | None) -> ipaddress.IPv4Address:
        if gateway_ip is None:
            return net.network_address + 1
        gateway = ipaddress.ip_address(self._address("gateway_ip", gateway_ip))
        if gateway not in net or gateway in (net.network_address, net.broadcast_address):
            raise InvalidRequest.for_field(
                "gateway_ip", f"{gateway} is not a usable address of {net}"
            )
        assert isinstance(gateway, ipaddress.IPv4Address)
        return gateway

    async def load_subnet(
        self, uow: UnitOfWork, ctx: RequestContext, subnet_id: str, perm: str
    ) -> Subnet:
        return await _load(uow, ctx, Subnet, subnet_id, perm, "subnet")

    async def get_subnet(self, ctx: RequestContext, subnet_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            subnet = await self.load_subnet(uow, ctx, subnet_id, "subnet:read")
            used = await self._used(uow, subnet.id)
        return subnet_view(subnet, used=used)

    async def _used(self, uow: UnitOfWork, subnet_id: str) -> int:
        count = await uow.session.scalar(
            select(func.count())
            .select_from(IpAllocation)
            .where(IpAllocation.subnet_id == subnet_id, IpAllocation.owner_type != "gateway")
        )
        return int(count or 0)

    async def list_subnets(
        self,
        ctx: RequestContext,
        *,
        vpc_id: str | None = None,
        name: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Subnet]:
        authz.require(ctx, "subnet:read")
        where = _filters(ctx, Subnet, tenant_id, vpc_id=vpc_id, name=name)
        async with self.db.uow(write=False) as uow:
            return await page_of(uow.session, Subnet, where, limit=limit, cursor=cursor)

    async def delete_subnet(self, ctx: RequestContext, subnet_id: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            subnet = await self.load_subnet(uow, ctx, subnet_id, "subnet:delete")
            owners = (
                await uow.session.scalars(
                    select(IpAllocation.owner_id).where(
                        IpAllocation.subnet_id == subnet.id, IpAllocation.owner_type != "gateway"
                    )
                )
            ).all()
            if owners:
                raise Conflict(
                    f"subnet {subnet.id} still has {len(owners)} address(es) in use "
                    f"(by {', '.join(sorted(owners)[:5])}); release them first"
                )
            if subnet.state == "deleting":
                raise Conflict(f"subnet {subnet.id} is already being deleted")
            subnet.state = "deleting"
            op = self.operations.create(
                uow, ctx, "subnet.delete", resource_type="subnet", resource_id=subnet.id
            )
            await uow.commit()
        return {"operation": operation_view(op), "subnet": subnet_view(subnet)}

    # -- IPAM ------------------------------------------------------------------------------

    async def allocate_ip(
        self,
        uow: UnitOfWork,
        subnet: Subnet,
        owner_type: str,
        owner_id: str,
        requested: str | None = None,
    ) -> str:
        """An address of ``subnet`` for the owner, inside the caller's transaction.

        Each attempt is a savepoint, so losing a race costs one retry, not the caller's
        transaction. A requested address that is taken or not usable is a 409 / 400.
        """
        net = ipaddress.ip_network(subnet.cidr)
        if requested is not None:
            address = ipaddress.ip_address(self._address("private_ip", requested))
            if address not in net or address in (net.network_address, net.broadcast_address):
                raise InvalidRequest.for_field(
                    "private_ip", f"{address} is not a usable address of {subnet.cidr}"
                )
            if not await self._insert(uow, subnet.id, str(address), owner_type, owner_id):
                raise Conflict(f"{address} is already in use in subnet {subnet.id}")
            return str(address)
        for _ in range(_ALLOCATE_ATTEMPTS):
            taken = set(
                (
                    await uow.session.scalars(
                        select(IpAllocation.ip).where(IpAllocation.subnet_id == subnet.id)
                    )
                ).all()
            )
            candidate = next((str(ip) for ip in net.hosts() if str(ip) not in taken), None)
            if candidate is None:
                raise Conflict(f"subnet {subnet.id} ({subnet.cidr}) has no free address left")
            if await self._insert(uow, subnet.id, candidate, owner_type, owner_id):
                return candidate
        raise Conflict(f"subnet {subnet.id} is too busy to allocate an address; retry")

    async def allocate_many(
        self, uow: UnitOfWork, subnet: Subnet, owner_type: str, owner_ids: list[str]
    ) -> list[str]:
        """One address per owner (a batch of VMs): one read of the taken addresses and one
        multi-row INSERT in a savepoint; a racing allocation makes the whole batch retry
        with a fresh read."""
        if len(owner_ids) == 1:
            return [await self.allocate_ip(uow, subnet, owner_type, owner_ids[0])]
        net = ipaddress.ip_network(subnet.cidr)
        for _ in range(_ALLOCATE_ATTEMPTS):
            taken = set(
                (
                    await uow.session.scalars(
                        select(IpAllocation.ip).where(IpAllocation.subnet_id == subnet.id)
                    )
                ).all()
            )
            free: list[str] = []
            for ip in net.hosts():
                if str(ip) not in taken:
                    free.append(str(ip))
                    if len(free) == len(owner_ids):
                        break
            if len(free) < len(owner_ids):
                raise Conflict(
                    f"subnet {subnet.id} ({subnet.cidr}) has {len(free)} free address(es), "
                    f"{len(owner_ids)} needed"
                )
            rows = [
                {"subnet_id": subnet.id, "ip": ip, "owner_type": owner_type, "owner_id": owner}
                for ip, owner in zip(free, owner_ids, strict=True)
            ]
            try:
                async with uow.session.begin_nested():
                    await uow.session.execute(insert(IpAllocation), rows)
            except IntegrityError:
                continue
            return free
        raise Conflict(f"subnet {subnet.id} is too busy to allocate addresses; retry")

    async def _insert(
        self, uow: UnitOfWork, subnet_id: str, ip: str, owner_type: str, owner_id: str
    ) -> bool:
        try:
            async with uow.session.begin_nested():
                uow.session.add(
                    IpAllocation(
                        subnet_id=subnet_id, ip=ip, owner_type=owner_type, owner_id=owner_id
                    )
                )
        except IntegrityError:
            return False
        return True

    async def release_ips(self, uow: UnitOfWork, owner_id: str) -> None:
        await uow.session.execute(delete(IpAllocation).where(IpAllocation.owner_id == owner_id))


def group_view(group: SecurityGroup, rules: list[SecurityGroupRule]) -> dict[str, Any]:
    return {
        "id": group.id,
        "tenant_id": group.tenant_id,
        "vpc_id": group.vpc_id,
        "name": group.name,
        "description": group.description,
        "is_default": group.is_default,
        "created_at": group.created_at,
        "rules": [rule_view(r) for r in sorted(rules, key=lambda r: (r.priority, r.id))],
    }


def rule_view(rule: SecurityGroupRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "direction": rule.direction,
        "protocol": rule.protocol,
        "port_min": rule.port_min,
        "port_max": rule.port_max,
        "remote_cidr": rule.remote_cidr,
        "remote_group_id": rule.remote_group_id,
        "action": rule.action,
        "priority": rule.priority,
        "description": rule.description,
        "created_at": rule.created_at,
    }


MAX_RULES_PER_GROUP = 100


class SecurityGroupService:
    """Security groups of a VPC and their rules (API.md: 201, synchronous).

    Rules are checked here as the data plane will need them (ports only for tcp/udp,
    ranges in order, a remote group of the same VPC), so what is accepted can always be
    programmed on the hosts.
    """

    def __init__(self, db: Database, quotas: QuotaService, network: NetworkService) -> None:
        self.db = db
        self.quotas = quotas
        self.network = network

    async def create(
        self, ctx: RequestContext, *, vpc_id: str, name: str, description: str | None = None
    ) -> dict[str, Any]:
        authz.require(ctx, "security-group:create")
        async with self.db.uow() as uow:
            vpc = await self.network.load_vpc(uow, ctx, vpc_id, "vpc:read")
            scope = SecurityGroup.vpc_id == vpc.id
            await _unique_name(uow, SecurityGroup, scope, name, "security group")
            await self.quotas.consume(uow, vpc.tenant_id, "security_groups")
            group = SecurityGroup(
                id=new_id("sg"),
                tenant_id=vpc.tenant_id,
                vpc_id=vpc.id,
                name=name,
                description=description,
                is_default=False,
            )
            uow.session.add(group)
            await uow.commit()
        return group_view(group, [])

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, group_id: str, perm: str
    ) -> SecurityGroup:
        return await _load(uow, ctx, SecurityGroup, group_id, perm, "security group")

    async def _rules(self, uow: UnitOfWork, group_id: str) -> list[SecurityGroupRule]:
        found = await uow.session.scalars(
            select(SecurityGroupRule).where(SecurityGroupRule.group_id == group_id)
        )
        return list(found.all())

    async def get(self, ctx: RequestContext, group_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            group = await self.load(uow, ctx, group_id, "security-group:read")
            return group_view(group, await self._rules(uow, group.id))

    async def list(
        self,
        ctx: RequestContext,
        *,
        vpc_id: str | None = None,
        name: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        authz.require(ctx, "security-group:read")
        where = _filters(ctx, SecurityGroup, tenant_id, vpc_id=vpc_id, name=name)
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, SecurityGroup, where, limit=limit, cursor=cursor)
            ids = [g.id for g in page.items]
            rules = (
                await uow.session.scalars(
                    select(SecurityGroupRule).where(SecurityGroupRule.group_id.in_(ids))
                )
            ).all()
        by_group: dict[str, list[SecurityGroupRule]] = {}
        for rule in rules:
            by_group.setdefault(rule.group_id, []).append(rule)
        return [group_view(g, by_group.get(g.id, [])) for g in page.items], page.next_cursor

    async def delete(self, ctx: RequestContext, group_id: str) -> None:
        async with self.db.uow() as uow:
            group = await self.load(uow, ctx, group_id, "security-group:delete")
            if group.is_default:
                raise Conflict(
                    f"{group.id} is the default group of VPC {group.vpc_id}; it goes with the VPC"
                )
            referenced = await uow.session.scalar(
                select(SecurityGroupRule.group_id).where(
                    SecurityGroupRule.remote_group_id == group.id,
                    SecurityGroupRule.group_id != group.id,
                )
            )
            if referenced is not None:
                raise Conflict(
                    f"rules of security group {referenced} name {group.id} as their remote "
                    "group; delete those rules first"
                )
            # Few NICs per VPC; the JSON list is checked here the same on both databases.
            users = [
                nic_id
                for nic_id, groups in await uow.session.execute(
                    select(Nic.id, Nic.security_group_ids).where(Nic.vpc_id == group.vpc_id)
                )
                if group.id in (groups or [])
            ]
            if users:
                raise Conflict(
                    f"security group {group.id} is used by {len(users)} NIC(s) "
                    f"({', '.join(sorted(users)[:5])})"
                )
            await uow.session.execute(
                delete(SecurityGroupRule).where(SecurityGroupRule.group_id == group.id)
            )
            await uow.session.delete(group)
            await self.quotas.release(uow, group.tenant_id, "security_groups")
            await uow.commit()

    async def add_rule(
        self, ctx: RequestContext, group_id: str, rule: dict[str, Any]
    ) -> dict[str, Any]:
        direction, protocol = rule["direction"], rule.get("protocol", "any")
        port_min, port_max = rule.get("port_min"), rule.get("port_max")
        if (port_min, port_max) != (None, None):
            if protocol not in ("tcp", "udp"):
                raise InvalidRequest.for_field("port_min", "ports apply to tcp and udp rules only")
            port_min = port_min if port_min is not None else port_max
            port_max = port_max if port_max is not None else port_min
            assert port_min is not None and port_max is not None
            if port_min > port_max:
                raise InvalidRequest.for_field("port_max", "must not be below port_min")
        remote_cidr = rule.get("remote_cidr")
        if remote_cidr is not None:
            try:
                remote_cidr = str(ipaddress.ip_network(remote_cidr, strict=False))
            except ValueError as exc:
                raise InvalidRequest.for_field("remote_cidr", str(exc)) from exc
        remote_group_id = rule.get("remote_group_id")
        if remote_cidr is not None and remote_group_id is not None:
            raise InvalidRequest.for_field(
                "remote_group_id", "give remote_cidr or remote_group_id, not both"
            )
        async with self.db.uow() as uow:
            group = await self.load(uow, ctx, group_id, "security-group:update")
            if remote_group_id is not None:
                remote = await self.load(uow, ctx, remote_group_id, "security-group:read")
                if remote.vpc_id != group.vpc_id:
                    raise InvalidRequest.for_field(
                        "remote_group_id", f"{remote.id} belongs to another VPC ({remote.vpc_id})"
                    )
            existing = await self._rules(uow, group.id)
            if len(existing) >= MAX_RULES_PER_GROUP:
                raise Conflict(f"security group {group.id} already has {MAX_RULES_PER_GROUP} rules")
            row = SecurityGroupRule(
                id=new_id("sgr"),
                group_id=group.id,
                tenant_id=group.tenant_id,
                direction=direction,
                protocol=protocol,
                port_min=port_min,
                port_max=port_max,
                remote_cidr=remote_cidr,
                remote_group_id=remote_group_id,
                action=rule.get("action", "allow"),
                priority=rule.get("priority", 100),
                description=rule.get("description"),
            )
            uow.session.add(row)
            await queue_push(uow, self.network.operations, ctx, [group.vpc_id])
            await uow.commit()
        return rule_view(row)

    async def delete_rule(self, ctx: RequestContext, group_id: str, rule_id: str) -> None:
        async with self.db.uow() as uow:
            group = await self.load(uow, ctx, group_id, "security-group:update")
            rule = await uow.session.get(SecurityGroupRule, rule_id)
            if rule is None or rule.group_id != group.id:
                raise NotFound(f"security group {group.id} has no rule {rule_id}")
            await uow.session.delete(rule)
            await queue_push(uow, self.network.operations, ctx, [group.vpc_id])
            await uow.commit()
