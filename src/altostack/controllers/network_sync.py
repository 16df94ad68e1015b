"""The push of the virtual network to the hosts: desired specs from the database, sent
as idempotent commands over the bus.

One VPC at a time, level-triggered: whatever changed (a VM placed, a NIC attached or
moved, a rule, an EIP, a NAT rule), the handler reads the VPC as committed and computes,
for every host concerned, the whole desired state of that VPC there:

- the VPC's :class:`NetworkSpec` (peers: the underlay addresses of the other hosts that
  have it), the :class:`PortSpec` of each NIC of a VM on that host, and the
  :class:`SecurityGroupSpec` of each group those ports use (remote-group rules resolved
  to the members' addresses);
- on the network host, the VPC's :class:`RouterSpec`: subnets, DHCP reservations,
  instance metadata, elastic IPs, SNAT/DNAT, and the external leg with the VPC's router
  address from the region's public pool.

Hosts concerned: those with a NIC of the VPC plus the network host (when the VPC has a
subnet). Hosts that had the VPC at the last push and no longer need it get
``network_remove``. The network host is the oldest enabled host flagged
``network_host``, else the oldest enabled host (the all-in-one: its only host).

Every command carries the VPC's ``generation``; an agent ignores one older than what it
applied, so overlapping pushes converge on the newest state. The VPC records the
generation all its hosts acknowledged (``observed_generation``); a host that fails or
stays silent makes the operation retry and, in the end, fail with the host's error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from altostack.bus import Bus
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.db.database import Database
from altostack.db.models_compute import Host, Vm
from altostack.db.models_network import (
    Eip,
    IpPool,
    NatGateway,
    NatRule,
    Nic,
    PublicIpAllocation,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    Vpc,
)
from altostack.domain.agent_protocol import agent_subject, command
from altostack.domain.operations import TemporaryError
from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    ExternalSpec,
    InstanceMetadata,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
    SnatRule,
)
from altostack.services.context import SYSTEM, RequestContext
from altostack.services.eips import allocate_public
from altostack.services.netsync import PUSH_KINDS, queue_push
from altostack.services.operations import OperationService

log = structlog.get_logger(__name__)


@dataclass
class HostPlan:
    """What one host must have of the VPC."""

    host_id: str
    network: NetworkSpec
    ports: list[PortSpec] = field(default_factory=list)
    groups: list[SecurityGroupSpec] = field(default_factory=list)
    router: RouterSpec | None = None

    def payload(self, generation: int) -> dict[str, Any]:
        return {
            "vpc_id": self.network.id,
            "generation": generation,
            "network": dataclasses.asdict(self.network),
            "ports": [dataclasses.asdict(p) for p in self.ports],
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "router": dataclasses.asdict(self.router) if self.router else None,
        }


@dataclass
class VpcPlan:
    vpc_id: str
    generation: int
    hosts: dict[str, HostPlan]
    remove_from: list[str]


@dataclass
class _Port:
    nic: Nic
    vm_id: str
    host_id: str
    hostname: str
    ssh_keys: list[str]
    user_data: str | None


class NetworkSyncController:
    def __init__(self, db: Database, bus: Bus, *, agent_timeout: float, region: str) -> None:
        self.db = db
        self.bus = bus
        self.agent_timeout = agent_timeout
        self.region = region
        self.operations: OperationService | None = None
        """Set by bootstrap: lets :meth:`resync_host` queue pushes."""
        self.nics_changed: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        """Set by bootstrap: hands a VM its NICs after one was attached or detached
        (``ComputeController.nics_changed``)."""
        self._arriving: dict[str, str] = {}
        """VM → the host it is moving to live (:meth:`arriving`)."""

    def register(self, registry: OperationRegistry) -> None:
        for kind in PUSH_KINDS:
            registry.register(kind, self.handle)
        registry.register("eip.allocate", self.allocated)

    async def resync_host(self, host_id: str) -> list[str]:
        """A host whose agent (re)started knows nothing: queue a push of every VPC it had
        at the last push, so its data plane is rebuilt from the desired state."""
        if self.operations is None:
            return []
        async with self.db.uow() as uow:
            rows = (await uow.session.execute(select(Vpc.id, Vpc.tenant_id, Vpc.hosts))).all()
            mine = [(vpc_id, tenant) for vpc_id, tenant, hosts in rows if host_id in (hosts or [])]
            ctx = RequestContext(SYSTEM)
            for vpc_id, tenant in mine:
                await queue_push(uow, self.operations, ctx, [vpc_id], tenant_id=tenant)
            await uow.commit()
        if mine:
            log.info("re-pushing the VPCs of a restarted agent", host_id=host_id, vpcs=len(mine))
        return [vpc_id for vpc_id, _ in mine]

    async def allocated(self, ctx: OperationContext) -> dict[str, Any]:
        """An EIP is usable once recorded; the push comes with its binding."""
        return {"eip_id": ctx.resource_id}

    async def handle(self, ctx: OperationContext) -> dict[str, Any]:
        if ctx.kind == "nat_gateway.create":
            async with self.db.uow() as uow:
                nat = await uow.session.get(NatGateway, ctx.resource_id)
                if nat is not None and nat.state == "creating":
                    nat.state = "available"
                await uow.commit()
        results = {}
        for vpc_id in ctx.input.get("vpc_ids", []):
            results[vpc_id] = await self.sync_vpc(str(vpc_id))
        vm_id = ctx.input.get("vm_id")
        if ctx.kind in ("nic.attach", "nic.detach") and vm_id and self.nics_changed:
            # The port is ready on the host (or gone): now the guest gets (or loses) the
            # device, hot-plugged when it runs, at its next start when it is stopped.
            return {"vpcs": results, "vm": await self.nics_changed(str(vm_id))}
        return {"vpcs": results}

    async def arriving(self, vm_id: str, host_id: str | None) -> None:
        """A VM is moving live to ``host_id`` (None: no longer): while it moves its ports
        exist on both hosts, so the destination's QEMU finds its taps and the guest keeps
        its network the moment it runs there; the VM's VPCs are pushed now."""
        if host_id is None:
            self._arriving.pop(vm_id, None)
        else:
            self._arriving[vm_id] = host_id
        await self.sync_vpcs_of_vm(vm_id)

    async def sync_vpcs_of_vm(self, vm_id: str) -> list[dict[str, Any]]:
        """Push every VPC the VM has a NIC in (before its host boots it); returns the
        VM's NICs as the compute driver's ``NicSpec`` fields."""
        async with self.db.uow(write=False) as uow:
            nics = (
                await uow.session.scalars(select(Nic).where(Nic.vm_id == vm_id).order_by(Nic.slot))
            ).all()
        for vpc_id in sorted({n.vpc_id for n in nics}):
            await self.sync_vpc(vpc_id)
        return [
            {"id": n.id, "mac": n.mac, "ip": n.private_ip, "network_id": n.vpc_id} for n in nics
        ]

    # -- one VPC ---------------------------------------------------------------------------

    async def sync_vpc(self, vpc_id: str) -> dict[str, Any]:
        plan = await self.plan(vpc_id)
        sends = [
            self._send(host_id, "network_apply", hp.payload(plan.generation))
            for host_id, hp in plan.hosts.items()
        ] + [
            self._send(host_id, "network_remove", {"vpc_id": vpc_id, "generation": plan.generation})
            for host_id in plan.remove_from
        ]
        replies = await asyncio.gather(*sends, return_exceptions=True)
        targets = list(plan.hosts) + plan.remove_from
        errors = {
            h: r for h, r in zip(targets, replies, strict=True) if isinstance(r, BaseException)
        }
        async with self.db.uow() as uow:
            vpc = await uow.session.get(Vpc, vpc_id)
            if vpc is not None:
                # Hosts whose removal failed stay listed, so the next push retries them;
                # an older plan than the VPC's newest only adds hosts (a newer push that
                # ran first may have placed the VPC on hosts this plan did not know).
                hosts = set(plan.hosts) | {h for h in plan.remove_from if h in errors}
                if plan.generation < vpc.generation:
                    hosts |= set(vpc.hosts or [])
                vpc.hosts = sorted(hosts)
                if not errors and plan.generation > vpc.observed_generation:
                    vpc.observed_generation = plan.generation
                await uow.commit()
        if errors:
            detail = "; ".join(f"{h}: {e}" for h, e in sorted(errors.items()))
            raise TemporaryError(f"VPC {vpc_id} generation {plan.generation}: {detail}", delay=1.0)
        return {
            "generation": plan.generation,
            "hosts": {h: r for h, r in zip(targets, replies, strict=True) if isinstance(r, dict)},
        }

    async def _send(self, host_id: str, action: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await self.bus.request(
                agent_subject(host_id), command(action, **fields), timeout=self.agent_timeout
            )
        except TimeoutError:
            raise TemporaryError(f"the agent did not answer {action} in time") from None
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise TemporaryError(f"{error.get('code', 'Error')}: {error.get('message', '?')}")
        return {"generation": reply.get("generation"), "applied": reply.get("applied")}

    async def _router_ip(self, vpc_id: str) -> tuple[IpPool | None, str | None]:
        """The VPC's own address on the external network, allocated once (race-free key)."""
        async with self.db.uow() as uow:
            pool = (
                await uow.session.scalars(
                    select(IpPool).where(IpPool.region == self.region).order_by(IpPool.id).limit(1)
                )
            ).first()
            if pool is None:
                return None, None
            ip = await uow.session.scalar(
                select(PublicIpAllocation.ip).where(
                    PublicIpAllocation.owner_id == vpc_id,
                    PublicIpAllocation.owner_type == "router",
                )
            )
            if ip is None:
                ip = await allocate_public(uow, pool, "router", vpc_id)
                await uow.commit()
            return pool, ip

    async def plan(self, vpc_id: str) -> VpcPlan:
        """The desired state of the VPC on every host concerned (one read transaction)."""
        async with self.db.uow(write=False) as uow:
            s = uow.session
            vpc = await s.get(Vpc, vpc_id)
            if vpc is None or vpc.state == "deleting":
                previous = list(vpc.hosts or []) if vpc else await self._hosts_of_deleted(vpc_id)
                return VpcPlan(vpc_id, vpc.generation + 1 if vpc else 2**31 - 1, {}, previous)
            subnets = list((await s.scalars(select(Subnet).where(Subnet.vpc_id == vpc.id))).all())
            rows = (
                await s.execute(
                    select(Nic, Vm.host_id, Vm.hostname, Vm.ssh_keys, Vm.user_data)
                    .join(Vm, Vm.id == Nic.vm_id)
                    .where(Nic.vpc_id == vpc.id, Vm.state != "deleted", Vm.host_id.is_not(None))
                    .order_by(Nic.vm_id, Nic.slot)
                )
            ).all()
            ports = [
                _Port(r[0], r[0].vm_id or "", r[1] or "", r[2], list(r[3] or []), r[4])
                for r in rows
            ]
            # A VM moving live has its ports on its destination too (not twice in DHCP).
            placed = ports + [
                dataclasses.replace(p, host_id=self._arriving[p.vm_id])
                for p in ports
                if self._arriving.get(p.vm_id) not in (None, p.host_id)
            ]
            groups = list(
                (await s.scalars(select(SecurityGroup).where(SecurityGroup.vpc_id == vpc.id))).all()
            )
            rules = list(
                (
                    await s.scalars(
                        select(SecurityGroupRule).where(
                            SecurityGroupRule.group_id.in_([g.id for g in groups])
                        )
                    )
                ).all()
            )
            eips = list((await s.scalars(select(Eip).where(Eip.vpc_id == vpc.id))).all())
            nat_rules = list(
                (await s.scalars(select(NatRule).where(NatRule.vpc_id == vpc.id))).all()
            )
            network_host = await self._network_host(uow) if subnets else None
            host_ids = {p.host_id for p in placed} | ({network_host} if network_host else set())
            underlay = {
                h.id: h.underlay_ip
                for h in (await s.scalars(select(Host).where(Host.id.in_(host_ids)))).all()
            }
            generation, previous = vpc.generation, list(vpc.hosts or [])
            vni, cidr = vpc.vni, vpc.cidr
        pool, router_ip = await self._router_ip(vpc_id) if network_host else (None, None)
        specs: dict[str, HostPlan] = {}
        group_specs = self._group_specs(groups, rules, ports)
        for host_id in sorted(host_ids):
            peers = tuple(ip for h, ip in underlay.items() if h != host_id and ip is not None)
            plan = HostPlan(host_id, NetworkSpec(id=vpc_id, vni=vni, cidr=cidr, peers=peers))
            used: set[str] = set()
            for p in placed:
                if p.host_id == host_id:
                    sg = tuple(p.nic.security_group_ids or [])
                    plan.ports.append(PortSpec(p.nic.id, vpc_id, p.nic.mac, p.nic.private_ip, sg))
                    used |= set(sg)
            plan.groups = [group_specs[g] for g in sorted(used) if g in group_specs]
            specs[host_id] = plan
        if network_host:
            specs[network_host].router = self._router(
                vpc_id, subnets, ports, eips, nat_rules, pool, router_ip
            )
        return VpcPlan(vpc_id, generation, specs, sorted(set(previous) - set(specs)))

    async def _hosts_of_deleted(self, vpc_id: str) -> list[str]:
        """A VPC row already gone: nothing says where it was, so every enabled host is
        told (removal of a missing VPC is a no-op)."""
        async with self.db.uow(write=False) as uow:
            return list(
                (await uow.session.scalars(select(Host.id).where(Host.liveness == "up"))).all()
            )

    async def _network_host(self, uow: Any) -> str | None:
        enabled = Host.admin_state == "enabled"
        for flagged in (True, False):
            stmt = select(Host.id).where(enabled).order_by(Host.created_at, Host.id).limit(1)
            if flagged:
                stmt = stmt.where(Host.network_host.is_(True))
            found = await uow.session.scalar(stmt)
            if found is not None:
                return str(found)
        return None

    @staticmethod
    def _group_specs(
        groups: list[SecurityGroup], rules: list[SecurityGroupRule], ports: list[_Port]
    ) -> dict[str, SecurityGroupSpec]:
        members: dict[str, set[str]] = {}
        for p in ports:
            for gid in p.nic.security_group_ids or []:
                members.setdefault(gid, set()).add(p.nic.private_ip)
        by_group: dict[str, list[RuleSpec]] = {g.id: [] for g in groups}
        for r in sorted(rules, key=lambda r: (r.priority, r.id)):
            remote_ips = (
                tuple(sorted(members.get(r.remote_group_id, set()))) if r.remote_group_id else None
            )
            by_group.setdefault(r.group_id, []).append(
                RuleSpec(
                    direction=r.direction,  # type: ignore[arg-type]
                    protocol=r.protocol,  # type: ignore[arg-type]
                    port_min=r.port_min,
                    port_max=r.port_max,
                    remote_cidr=r.remote_cidr,
                    remote_ips=remote_ips,
                    action=r.action,  # type: ignore[arg-type]
                    priority=r.priority,
                )
            )
        return {gid: SecurityGroupSpec(gid, tuple(rs)) for gid, rs in by_group.items()}

    @staticmethod
    def _router(
        vpc_id: str,
        subnets: list[Subnet],
        ports: list[_Port],
        eips: list[Eip],
        nat_rules: list[NatRule],
        pool: IpPool | None,
        router_ip: str | None,
    ) -> RouterSpec:
        external = (
            ExternalSpec(pool.cidr, pool.gateway_ip, router_ip) if pool and router_ip else None
        )
        nic_eip = {e.nic_id: e for e in eips if e.nic_id}
        nat_eip = {e.nat_gateway_id: e.address for e in eips if e.nat_gateway_id}
        first_ip: dict[str, str] = {}
        vm_public: dict[str, str] = {}
        for p in ports:  # ordered by VM, slot: the first NIC of a VM is its primary
            first_ip.setdefault(p.vm_id, p.nic.private_ip)
            if p.nic.id in nic_eip:
                vm_public.setdefault(p.vm_id, nic_eip[p.nic.id].address)
        dhcp, instances, seen = [], [], set()
        for p in ports:
            name = p.hostname if p.vm_id not in seen else f"{p.hostname}-eth{p.nic.slot}"
            seen.add(p.vm_id)
            dhcp.append(DhcpHost(p.nic.mac, p.nic.private_ip, name))
            public = nic_eip[p.nic.id].address if p.nic.id in nic_eip else vm_public.get(p.vm_id)
            instances.append(
                InstanceMetadata(
                    p.nic.private_ip, p.vm_id, p.hostname, tuple(p.ssh_keys), p.user_data, public
                )
            )
        bindings: list[EipBinding] = []
        snat: list[SnatRule] = []
        dnat: list[DnatRule] = []
        if external is not None:
            nic_ip = {p.nic.id: p.nic.private_ip for p in ports}
            for e in eips:
                if e.nic_id in nic_ip:
                    bindings.append(EipBinding(e.address, nic_ip[e.nic_id], e.bandwidth_mbps))
            cidr_of = {s.id: s.cidr for s in subnets}
            for r in nat_rules:
                public = nat_eip.get(r.nat_gateway_id)
                if public is None:
                    continue  # the gateway has no EIP yet
                if r.kind == "snat" and r.subnet_id in cidr_of:
                    snat.append(SnatRule(cidr_of[r.subnet_id], public))
                elif r.kind == "snat" and r.vm_id in first_ip:
                    snat.append(SnatRule(f"{first_ip[r.vm_id]}/32", public))
                elif r.kind == "dnat" and r.vm_id in first_ip:
                    dnat.append(
                        DnatRule(
                            public,
                            r.protocol,  # type: ignore[arg-type]
                            int(r.public_port or 0),
                            first_ip[r.vm_id],
                            int(r.private_port or 0),
                        )
                    )
        return RouterSpec(
            id=vpc_id,
            network_id=vpc_id,
            subnets=tuple(
                RouterSubnet(s.id, s.cidr, s.gateway_ip, s.dhcp, tuple(s.dns_servers or []))
                for s in sorted(subnets, key=lambda s: s.id)
            ),
            external=external,
            default_snat=external is not None,
            snat=tuple(snat),
            eips=tuple(bindings),
            dnat=tuple(dnat),
            dhcp_hosts=tuple(dhcp),
            instances=tuple(instances),
        )
