"""Regions, clusters and hosts: the platform's physical inventory (administrators only).

Hosts are not created by hand: a host agent joins a cluster with the cluster's join token,
reports its capacity and then heartbeats. What the administrator sets (enabled,
disabled, maintenance) and what the heartbeats say (up, down) are kept apart and shown
as one ``state``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select

from altostack.db.database import Database
from altostack.db.models_compute import Cluster, Host, Region, Vm
from altostack.db.repositories import page_of
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ARCHES = ("x86_64", "aarch64")
ADMIN_STATES = {"enable": "enabled", "disable": "disabled", "maintain": "maintenance"}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def host_state(host: Host) -> str:
    if host.admin_state == "disabled":
        return "disabled"
    if host.admin_state == "maintenance":
        return "maintenance"
    return host.liveness


def region_view(r: Region) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "description": r.description, "created_at": r.created_at}


def cluster_view(c: Cluster) -> dict[str, Any]:
    return {
        "id": c.id,
        "region_id": c.region_id,
        "name": c.name,
        "arch": c.arch,
        "cpu_allocation_ratio": c.cpu_allocation_ratio,
        "ram_allocation_ratio": c.ram_allocation_ratio,
        "policy": c.policy,
        "created_at": c.created_at,
    }


def host_view(h: Host, cluster: Cluster | None = None) -> dict[str, Any]:
    cpu_ratio = cluster.cpu_allocation_ratio if cluster else 1.0
    ram_ratio = cluster.ram_allocation_ratio if cluster else 1.0
    return {
        "id": h.id,
        "hostname": h.hostname,
        "cluster_id": h.cluster_id,
        "state": host_state(h),
        "admin_state": h.admin_state,
        "liveness": h.liveness,
        "arch": h.arch,
        "accel": h.accel,
        "capacity": {
            "cores": h.cores,
            "memory_mib": h.memory_mib,
            "disk_gib": h.disk_gib,
            "gpus": list(h.gpus or []),
        },
        "allocatable": {
            "vcpus": int(h.cores * cpu_ratio),
            "memory_mib": int(h.memory_mib * ram_ratio),
            "disk_gib": h.disk_gib,
            "gpus": len(h.gpus or []),
        },
        "usage": {
            "vcpus": h.vcpus_used,
            "memory_mib": h.memory_mib_used,
            "disk_gib": h.disk_gib_used,
            "gpus": h.gpus_used,
        },
        "load": h.load,
        "underlay_ip": h.underlay_ip,
        "network_host": h.network_host,
        "last_heartbeat_at": h.last_heartbeat_at,
        "created_at": h.created_at,
    }


def check_name(field: str, value: str) -> None:
    if not NAME.match(value):
        raise InvalidRequest.for_field(
            field, "1-63 characters: lower-case letters, digits and '-', not starting with '-'"
        )


class InfraService:
    def __init__(self, db: Database, *, heartbeat_timeout: float) -> None:
        self.db = db
        self.heartbeat_timeout = heartbeat_timeout

    # ---- regions ---------------------------------------------------------------------
    async def create_region(
        self, ctx: RequestContext, name: str, description: str | None
    ) -> dict[str, Any]:
        authz.require(ctx, "region:create")
        check_name("name", name)
        async with self.db.uow() as uow:
            if await uow.session.scalar(select(Region).where(Region.name == name)):
                raise Conflict(f"a region named {name!r} already exists")
            region = Region(id=new_id("region"), name=name, description=description)
            uow.session.add(region)
            await uow.commit()
        return region_view(region)

    async def list_regions(self, ctx: RequestContext) -> list[dict[str, Any]]:
        authz.require(ctx, "region:read")
        async with self.db.uow(write=False) as uow:
            rows = await uow.session.scalars(select(Region).order_by(Region.id.desc()))
            return [region_view(r) for r in rows]

    async def get_region(self, ctx: RequestContext, region_id: str) -> dict[str, Any]:
        authz.require(ctx, "region:read")
        async with self.db.uow(write=False) as uow:
            region = await uow.session.get(Region, region_id)
        if region is None:
            raise NotFound.resource("region", region_id)
        return region_view(region)

    async def delete_region(self, ctx: RequestContext, region_id: str) -> None:
        authz.require(ctx, "region:delete")
        async with self.db.uow() as uow:
            region = await uow.session.get(Region, region_id)
            if region is None:
                raise NotFound.resource("region", region_id)
            clusters = await uow.session.scalar(
                select(func.count()).select_from(Cluster).where(Cluster.region_id == region_id)
            )
            if clusters:
                raise Conflict(f"region {region.name!r} still has {clusters} cluster(s)")
            await uow.session.delete(region)
            await uow.commit()

    # ---- clusters --------------------------------------------------------------------
    async def create_cluster(self, ctx: RequestContext, **fields: Any) -> dict[str, Any]:
        authz.require(ctx, "cluster:create")
        check_name("name", fields["name"])
        async with self.db.uow() as uow:
            if await uow.session.get(Region, fields["region_id"]) is None:
                raise InvalidRequest.for_field(
                    "region_id", f"region {fields['region_id']!r} does not exist"
                )
            exists = await uow.session.scalar(
                select(Cluster).where(
                    Cluster.region_id == fields["region_id"], Cluster.name == fields["name"]
                )
            )
            if exists is not None:
                raise Conflict(f"a cluster named {fields['name']!r} already exists in the region")
            cluster = Cluster(id=new_id("cluster"), **fields)
            uow.session.add(cluster)
            await uow.commit()
        return cluster_view(cluster)

    async def update_cluster(
        self,
        ctx: RequestContext,
        cluster_id: str,
        *,
        cpu_allocation_ratio: float | None,
        ram_allocation_ratio: float | None,
        policy: str | None,
    ) -> dict[str, Any]:
        """Overcommit only ever goes up: lowering it could strand running VMs."""
        authz.require(ctx, "cluster:update")
        async with self.db.uow() as uow:
            cluster = await self._cluster(uow, cluster_id)
            if cpu_allocation_ratio is not None:
                if cpu_allocation_ratio < cluster.cpu_allocation_ratio:
                    raise Conflict(
                        f"cpu_allocation_ratio can only be raised (now "
                        f"{cluster.cpu_allocation_ratio:g}); lowering it could strand VMs"
                    )
                cluster.cpu_allocation_ratio = cpu_allocation_ratio
            if ram_allocation_ratio is not None:
                if ram_allocation_ratio < cluster.ram_allocation_ratio:
                    raise Conflict(
                        f"ram_allocation_ratio can only be raised (now "
                        f"{cluster.ram_allocation_ratio:g})"
                    )
                cluster.ram_allocation_ratio = ram_allocation_ratio
            if policy is not None:
                cluster.policy = policy
            await uow.commit()
        return cluster_view(cluster)

    async def _cluster(self, uow: UnitOfWork, cluster_id: str) -> Cluster:
        cluster = await uow.session.get(Cluster, cluster_id)
        if cluster is None:
            raise NotFound.resource("cluster", cluster_id)
        return cluster

    async def list_clusters(
        self, ctx: RequestContext, region_id: str | None
    ) -> list[dict[str, Any]]:
        authz.require(ctx, "cluster:read")
        async with self.db.uow(write=False) as uow:
            stmt = select(Cluster).order_by(Cluster.id.desc())
            if region_id:
                stmt = stmt.where(Cluster.region_id == region_id)
            return [cluster_view(c) for c in await uow.session.scalars(stmt)]

    async def get_cluster(self, ctx: RequestContext, cluster_id: str) -> dict[str, Any]:
        authz.require(ctx, "cluster:read")
        async with self.db.uow(write=False) as uow:
            return cluster_view(await self._cluster(uow, cluster_id))

    async def delete_cluster(self, ctx: RequestContext, cluster_id: str) -> None:
        authz.require(ctx, "cluster:delete")
        async with self.db.uow() as uow:
            cluster = await self._cluster(uow, cluster_id)
            hosts = await uow.session.scalar(
                select(func.count()).select_from(Host).where(Host.cluster_id == cluster_id)
            )
            if hosts:
                raise Conflict(f"cluster {cluster.name!r} still has {hosts} host(s)")
            await uow.session.delete(cluster)
            await uow.commit()

    async def issue_join_token(self, ctx: RequestContext, cluster_id: str) -> str:
        """A new join token for the cluster (the previous one stops working); shown once."""
        authz.require(ctx, "cluster:update")
        token = "join_" + secrets.token_urlsafe(24)
        async with self.db.uow() as uow:
            cluster = await self._cluster(uow, cluster_id)
            cluster.join_token_hash = _hash(token)
            await uow.commit()
        return token

    async def set_join_token(self, cluster_id: str, token: str) -> None:
        """Bootstrap: the all-in-one knows its own token."""
        async with self.db.uow() as uow:
            cluster = await self._cluster(uow, cluster_id)
            cluster.join_token_hash = _hash(token)
            await uow.commit()

    # ---- hosts -----------------------------------------------------------------------
    async def register_host(
        self, join_token: str, *, hostname: str, report: dict[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """An agent joins (or re-joins after a restart): same hostname, same host id.

        Returns the host and a fresh agent token."""
        agent_token = "agent_" + secrets.token_urlsafe(24)
        async with self.db.uow() as uow:
            cluster = await uow.session.scalar(
                select(Cluster).where(Cluster.join_token_hash == _hash(join_token))
            )
            if cluster is None or not hmac.compare_digest(
                cluster.join_token_hash or "", _hash(join_token)
            ):
                raise Unauthenticated("the join token is not valid for any cluster")
            if report["arch"] != cluster.arch:
                raise InvalidRequest.for_field(
                    "arch", f"host is {report['arch']}, cluster {cluster.name!r} is {cluster.arch}"
                )
            host = await uow.session.scalar(select(Host).where(Host.hostname == hostname))
            if host is None:
                host = Host(id=new_id("host"), hostname=hostname, cluster_id=cluster.id)
                uow.session.add(host)
            elif host.cluster_id != cluster.id:
                raise Conflict(f"host {hostname!r} already belongs to another cluster")
            host.arch = report["arch"]
            host.accel = report.get("accel", "sim")
            host.cores = int(report["cores"])
            host.memory_mib = int(report["memory_mib"])
            host.disk_gib = int(report["disk_gib"])
            host.gpus = list(report.get("gpus", []))
            host.capabilities = dict(report.get("capabilities", {}))
            underlay = report.get("underlay_ip")
            host.underlay_ip = str(underlay) if underlay else host.underlay_ip
            host.network_host = bool(report.get("network_host", host.network_host or False))
            host.liveness = "up"
            host.last_heartbeat_at = utcnow()
            host.agent_token_hash = _hash(agent_token)
            host.vcpus_used = host.vcpus_used or 0
            host.memory_mib_used = host.memory_mib_used or 0
            host.disk_gib_used = host.disk_gib_used or 0
            host.gpus_used = host.gpus_used or 0
            host.load = 0.0
            host.admin_state = host.admin_state or "enabled"
            await uow.commit()
        return host_view(host, cluster), agent_token

    async def heartbeat(self, host_id: str, load: float | None) -> bool:
        """Record that a host is alive; False when the host is unknown (re-register)."""
        async with self.db.uow() as uow:
            host = await uow.session.get(Host, host_id)
            if host is None:
                return False
            host.last_heartbeat_at = utcnow()
            host.liveness = "up"
            if load is not None:
                host.load = max(0.0, min(1.0, float(load)))
            await uow.commit()
        return True

    async def mark_dead_hosts(self) -> list[str]:
        """Hosts whose heartbeats stopped are ``down``; returns the ids that changed."""
        deadline = utcnow() - timedelta(seconds=self.heartbeat_timeout)
        stale = (Host.liveness == "up", Host.last_heartbeat_at < deadline)
        async with self.db.uow(write=False) as uow:  # the common case: nothing to do
            if await uow.session.scalar(select(Host.id).where(*stale).limit(1)) is None:
                return []
        async with self.db.uow() as uow:
            hosts = list(await uow.session.scalars(select(Host).where(*stale)))
            for host in hosts:
                host.liveness = "down"
            await uow.commit()
        return [h.id for h in hosts]

    async def list_hosts(
        self,
        ctx: RequestContext,
        *,
        cluster_id: str | None,
        state: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        authz.require(ctx, "host:read")
        where: list[ColumnElement[bool]] = []
        if cluster_id:
            where.append(Host.cluster_id == cluster_id)
        if state in ("disabled", "maintenance"):
            where.append(Host.admin_state == state)
        elif state in ("up", "down"):
            where += [Host.admin_state == "enabled", Host.liveness == state]
        async with self.db.uow(write=False) as uow:
            page = await page_of(uow.session, Host, where, limit=limit, cursor=cursor)
            clusters = {c.id: c for c in await uow.session.scalars(select(Cluster))}
        return [host_view(h, clusters.get(h.cluster_id)) for h in page.items], page.next_cursor

    async def get_host(self, ctx: RequestContext, host_id: str) -> dict[str, Any]:
        authz.require(ctx, "host:read")
        async with self.db.uow(write=False) as uow:
            host = await uow.session.get(Host, host_id)
            if host is None:
                raise NotFound.resource("host", host_id)
            cluster = await uow.session.get(Cluster, host.cluster_id)
        return host_view(host, cluster)

    async def set_admin_state(self, ctx: RequestContext, host_id: str, verb: str) -> dict[str, Any]:
        authz.require(ctx, f"host:{verb}")
        async with self.db.uow() as uow:
            host = await uow.session.get(Host, host_id)
            if host is None:
                raise NotFound.resource("host", host_id)
            host.admin_state = ADMIN_STATES[verb]
            cluster = await uow.session.get(Cluster, host.cluster_id)
            await uow.commit()
        return host_view(host, cluster)

    async def delete_host(self, ctx: RequestContext, host_id: str) -> None:
        authz.require(ctx, "host:delete")
        async with self.db.uow() as uow:
            host = await uow.session.get(Host, host_id)
            if host is None:
                raise NotFound.resource("host", host_id)
            vms = await uow.session.scalar(
                select(func.count())
                .select_from(Vm)
                .where(Vm.host_id == host_id, Vm.state != "deleted")
            )
            if vms:
                raise Conflict(f"host {host.hostname!r} still runs {vms} VM(s); evacuate it first")
            await uow.session.delete(host)
            await uow.commit()
