"""Storage pools (platform administrators): which backend serves which storage classes
for which clusters, how far it may be overcommitted, and what its hosts report of it.

A pool row is the administrator's mapping; its capacity, use and health come from the
agents: each heartbeat carries the host's ``PoolInfo`` and is recorded per (pool, host).
A ``local``/``sim`` pool is one directory (or sim pool) per host, so its capacity is the
sum over its hosts; a shared (``ceph``) pool is one cluster seen from every host, so the
latest report stands for it. The worst health of any report is the pool's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from altostack.bus import Bus, Message, Subscription
from altostack.db.database import Database
from altostack.db.models_compute import Host
from altostack.db.models_storage import Disk, StoragePool, StoragePoolReport
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.agent_protocol import HEARTBEAT_SUBJECT
from altostack.domain.errors import Conflict, InvalidRequest, NotFound
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext

BACKENDS = ("local", "ceph", "sim")
SHARED_BACKENDS = frozenset({"ceph"})
_HEALTH_ORDER = {"ok": 0, "degraded": 1, "error": 2}
GIB = 1024**3
REPORT_REFRESH = timedelta(seconds=60)


def pool_view(pool: StoragePool, reports: list[StoragePoolReport]) -> dict[str, Any]:
    if pool.shared and reports:
        newest = max(reports, key=lambda r: r.reported_at)
        capacity, allocated, provisioned = (
            newest.capacity_bytes, newest.allocated_bytes, newest.provisioned_bytes,
        )  # fmt: skip
    else:
        capacity = sum(r.capacity_bytes for r in reports)
        allocated = sum(r.allocated_bytes for r in reports)
        provisioned = sum(r.provisioned_bytes for r in reports)
    worst = max(reports, key=lambda r: _HEALTH_ORDER.get(r.health, 2), default=None)
    health = worst.health if worst is not None else "unknown"
    return {
        "id": pool.id,
        "name": pool.name,
        "backend": pool.backend,
        "shared": pool.shared,
        "storage_classes": list(pool.storage_classes or []),
        "cluster_ids": list(pool.cluster_ids or []),
        "allocation_ratio": pool.allocation_ratio,
        "description": pool.description,
        "capacity_bytes": capacity,
        "allocated_bytes": allocated,
        "provisioned_bytes": provisioned,
        "provisioned_gib": pool.provisioned_gib,
        "health": health,
        "health_detail": (worst.health_detail or None) if worst is not None else None,
        "hosts": [
            {"host_id": r.host_id, "health": r.health, "reported_at": r.reported_at}
            for r in sorted(reports, key=lambda r: r.host_id)
        ],
        "created_at": pool.created_at,
    }


def capacity_gib(pool: StoragePool, reports: list[StoragePoolReport]) -> int | None:
    """What may be provisioned on the pool (capacity x ratio), None while unknown."""
    view = pool_view(pool, reports)
    if not view["capacity_bytes"]:
        return None
    return int(view["capacity_bytes"] * pool.allocation_ratio // GIB)


class StoragePoolService:
    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self._sub: Subscription | None = None

    # -- reports -------------------------------------------------------------------------

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(
            HEARTBEAT_SUBJECT, self._on_heartbeat, queue="storage-pool-reports"
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_heartbeat(self, message: Message) -> dict[str, Any] | None:
        report = message.data.get("storage")
        if isinstance(report, dict):
            await self.record_report(str(message.data.get("host_id")), report)
        return None

    async def record_report(self, host_id: str, report: dict[str, Any]) -> int:
        """Store a host's PoolInfo on every pool of its cluster and backend; returns how
        many rows changed. Heartbeats come every few seconds from every host, so only a
        change (or a report older than ``REPORT_REFRESH``) costs a write transaction."""
        values = {
            "capacity_bytes": int(report.get("capacity_bytes") or 0),
            "allocated_bytes": int(report.get("allocated_bytes") or 0),
            "provisioned_bytes": int(report.get("provisioned_bytes") or 0),
            "health": str(report.get("health") or "ok"),
            "health_detail": str(report.get("health_detail") or "") or None,
        }
        async with self.db.uow(write=False) as uow:
            host = await uow.session.get(Host, host_id)
            if host is None:
                return 0
            pools = [
                p.id
                for p in await uow.session.scalars(select(StoragePool))
                if host.cluster_id in (p.cluster_ids or [])
                and report.get("backend") in (None, p.backend)
            ]
            stale = []
            for pool_id in pools:
                row = await uow.session.get(StoragePoolReport, (pool_id, host_id))
                if (
                    row is None
                    or any(getattr(row, k) != v for k, v in values.items())
                    or row.reported_at < utcnow() - REPORT_REFRESH
                ):
                    stale.append(pool_id)
        if not stale:
            return 0
        async with self.db.uow() as uow:
            for pool_id in stale:
                row = await uow.session.get(StoragePoolReport, (pool_id, host_id))
                if row is None:
                    row = StoragePoolReport(pool_id=pool_id, host_id=host_id)
                    uow.session.add(row)
                for key, value in values.items():
                    setattr(row, key, value)
                row.reported_at = utcnow()
            await uow.commit()
        return len(stale)

    # -- administration --------------------------------------------------------------------

    async def create(self, ctx: RequestContext, req: dict[str, Any]) -> dict[str, Any]:
        authz.require(ctx, "storage-pool:create")
        backend = req["backend"]
        if backend not in BACKENDS:
            raise InvalidRequest.for_field("backend", f"must be one of {', '.join(BACKENDS)}")
        async with self.db.uow() as uow:
            if await uow.session.scalar(
                select(StoragePool.id).where(StoragePool.name == req["name"])
            ):
                raise Conflict(f"a storage pool named {req['name']!r} already exists")
            classes = list(dict.fromkeys(req.get("storage_classes") or []))
            await self._check_classes(uow, classes, None)
            await self._check_clusters(uow, req.get("cluster_ids") or [])
            pool = StoragePool(
                id=new_id("pool"),
                name=req["name"],
                backend=backend,
                shared=backend in SHARED_BACKENDS,
                storage_classes=classes,
                cluster_ids=list(dict.fromkeys(req.get("cluster_ids") or [])),
                allocation_ratio=float(req.get("allocation_ratio") or 1.0),
                provisioned_gib=0,
                description=req.get("description"),
            )
            uow.session.add(pool)
            await uow.commit()
        return pool_view(pool, [])

    async def update(
        self, ctx: RequestContext, pool_id: str, req: dict[str, Any]
    ) -> dict[str, Any]:
        """Map classes and clusters, change the ratio; ``None`` fields are left alone."""
        async with self.db.uow() as uow:
            pool = await self.load(uow, ctx, pool_id, "storage-pool:update")
            if req.get("storage_classes") is not None:
                classes = list(dict.fromkeys(req["storage_classes"]))
                await self._check_classes(uow, classes, pool.id)
                pool.storage_classes = classes
            if req.get("cluster_ids") is not None:
                await self._check_clusters(uow, req["cluster_ids"])
                pool.cluster_ids = list(dict.fromkeys(req["cluster_ids"]))
            if req.get("allocation_ratio") is not None:
                pool.allocation_ratio = float(req["allocation_ratio"])
            if req.get("description") is not None:
                pool.description = req["description"]
            view = pool_view(pool, await self.reports(uow, pool.id))
            await uow.commit()
        return view

    async def delete(self, ctx: RequestContext, pool_id: str) -> None:
        async with self.db.uow() as uow:
            pool = await self.load(uow, ctx, pool_id, "storage-pool:delete")
            used = await uow.session.scalar(select(Disk.id).where(Disk.pool_id == pool.id))
            if used is not None:
                raise Conflict(f"storage pool {pool.id} still holds disks (e.g. {used})")
            for row in await self.reports(uow, pool.id):
                await uow.session.delete(row)
            await uow.session.delete(pool)
            await uow.commit()

    async def get(self, ctx: RequestContext, pool_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            pool = await self.load(uow, ctx, pool_id, "storage-pool:read")
            return pool_view(pool, await self.reports(uow, pool.id))

    async def list_all(self, ctx: RequestContext) -> list[dict[str, Any]]:
        authz.require(ctx, "storage-pool:read")
        async with self.db.uow(write=False) as uow:
            pools = list(await uow.session.scalars(select(StoragePool).order_by(StoragePool.id)))
            return [pool_view(p, await self.reports(uow, p.id)) for p in pools]

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, pool_id: str, perm: str
    ) -> StoragePool:
        authz.require(ctx, perm)  # the platform's own: 403 for everyone else
        pool = await uow.session.get(StoragePool, pool_id)
        if pool is None:
            raise NotFound.resource("storage pool", pool_id)
        return pool

    @staticmethod
    async def reports(uow: UnitOfWork, pool_id: str) -> list[StoragePoolReport]:
        return list(
            await uow.session.scalars(
                select(StoragePoolReport).where(StoragePoolReport.pool_id == pool_id)
            )
        )

    @staticmethod
    async def _check_classes(uow: UnitOfWork, classes: list[str], pool_id: str | None) -> None:
        """A storage class maps to one pool: a disk's class must name where it goes."""
        for other in await uow.session.scalars(select(StoragePool)):
            if other.id == pool_id:
                continue
            taken = set(classes) & set(other.storage_classes or [])
            if taken:
                raise Conflict(
                    f"storage class {sorted(taken)[0]!r} is already served by pool {other.id} "
                    f"({other.name}); a class maps to one pool",
                    extra={"field": "storage_classes", "pool_id": other.id},
                )

    @staticmethod
    async def _check_clusters(uow: UnitOfWork, cluster_ids: list[str]) -> None:
        from altostack.db.models_compute import Cluster

        for cluster_id in cluster_ids:
            if await uow.session.get(Cluster, cluster_id) is None:
                raise InvalidRequest.for_field("cluster_ids", f"no cluster {cluster_id}")

    # -- used by the disk service --------------------------------------------------------

    async def pool_for_class(self, uow: UnitOfWork, storage_class: str) -> StoragePool:
        for pool in await uow.session.scalars(select(StoragePool).order_by(StoragePool.id)):
            if storage_class in (pool.storage_classes or []):
                return pool
        known = sorted(
            {c for p in await uow.session.scalars(select(StoragePool)) for c in p.storage_classes}
        )
        raise InvalidRequest.for_field(
            "storage_class",
            f"no storage pool serves class {storage_class!r}"
            + (f"; known: {', '.join(known)}" if known else " (no pools are set up)"),
        )

    async def claim(self, uow: UnitOfWork, pool: StoragePool, gib: int) -> None:
        """Take ``gib`` of the pool's provisioning room, race-free (one conditional UPDATE)."""
        cap = capacity_gib(pool, await self.reports(uow, pool.id))
        stmt = update(StoragePool).where(StoragePool.id == pool.id)
        if cap is not None:
            stmt = stmt.where(StoragePool.provisioned_gib + gib <= cap)
        result = await uow.session.execute(
            stmt.values(provisioned_gib=StoragePool.provisioned_gib + gib).execution_options(
                synchronize_session=False
            )
        )
        if not getattr(result, "rowcount", 0):
            raise Conflict(
                f"storage pool {pool.name} has no room for {gib} GiB more "
                f"({pool.provisioned_gib} of {cap} GiB provisioned, allocation ratio "
                f"{pool.allocation_ratio:g})",
                extra={"pool_id": pool.id, "code_detail": "InsufficientCapacity"},
            )

    async def unclaim(self, uow: UnitOfWork, pool_id: str, gib: int) -> None:
        await uow.session.execute(
            update(StoragePool)
            .where(StoragePool.id == pool_id, StoragePool.provisioned_gib >= gib)
            .values(provisioned_gib=StoragePool.provisioned_gib - gib)
            .execution_options(synchronize_session=False)
        )
