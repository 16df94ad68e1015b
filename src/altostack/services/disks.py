"""Cloud disks (``disk-…``): create (blank, from an image, a snapshot or another disk),
attach to a VM, detach, grow, delete to the recycle bin, restore, purge.

The request validates against the disk's state (a ``409`` names ``current_state``), takes
quota (disks, disk_gib) and the pool's room in its transaction, writes the spec and an
operation; ``controllers/disks.py`` drives the host agent. A disk lives where its pool
is: on a shared pool (Ceph) any host of the pool's clusters reaches it; on a per-host pool
(local, sim) it lives on one host (``host_id``) and attaches only to VMs there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select

from altostack.db.database import Database
from altostack.db.models import Operation
from altostack.db.models_compute import Host, Image, Vm
from altostack.db.models_storage import Disk, Snapshot, StoragePool
from altostack.db.repositories import Page, page_of
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.images import can_see
from altostack.services.operations import OperationService
from altostack.services.quotas import QuotaService
from altostack.services.storage_pools import StoragePoolService

MAX_DISK_GIB = 16384
DEFAULT_CLASS = "standard"

# verb → the disk states it may start from, and the state while it runs.
ALLOWED: dict[str, tuple[frozenset[str], str | None]] = {
    "attach": (frozenset({"available"}), "attaching"),
    "detach": (frozenset({"in-use"}), "detaching"),
    "resize": (frozenset({"available", "in-use"}), "resizing"),
    "clone": (frozenset({"available", "in-use"}), None),
    "snapshot": (frozenset({"available", "in-use"}), None),
    "delete": (frozenset({"available", "error"}), "deleting"),
    "restore": (frozenset({"deleted"}), "restoring"),
    "rollback": (frozenset({"available", "in-use"}), "restoring"),
}


def disk_view(disk: Disk) -> dict[str, Any]:
    return {
        "id": disk.id,
        "tenant_id": disk.tenant_id,
        "name": disk.name,
        "size_gib": disk.size_gib,
        "storage_class": disk.storage_class,
        "pool_id": disk.pool_id,
        "host_id": disk.host_id,
        "source_type": disk.source_type,
        "source_id": disk.source_id,
        "vm_id": disk.vm_id,
        "state": disk.state,
        "reason": disk.reason,
        "snapshot_count": disk.snapshot_count,
        "generation": disk.generation,
        "created_at": disk.created_at,
        "updated_at": disk.updated_at,
        "deleted_at": disk.deleted_at,
        "purge_after": disk.purge_after,
    }


def check_state(disk: Disk, verb: str) -> None:
    allowed, _ = ALLOWED[verb]
    if disk.state not in allowed:
        raise Conflict(
            f"cannot {verb} disk {disk.id}: it is {disk.state} "
            f"(needs {' or '.join(sorted(allowed))})",
            extra={"current_state": disk.state, "disk_id": disk.id},
        )


async def up_hosts(uow: UnitOfWork, pool: StoragePool) -> list[Host]:
    if not pool.cluster_ids:
        return []
    return list(
        await uow.session.scalars(
            select(Host)
            .where(
                Host.cluster_id.in_(pool.cluster_ids),
                Host.admin_state == "enabled",
                Host.liveness == "up",
            )
            .order_by(Host.id)
        )
    )


class DiskService:
    def __init__(
        self,
        db: Database,
        operations: OperationService,
        quotas: QuotaService,
        pools: StoragePoolService,
        *,
        recycle_seconds: int,
    ) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.pools = pools
        self.recycle_seconds = recycle_seconds

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, disk_id: str, perm: str, *, lock: bool = False
    ) -> Disk:
        disk = await uow.session.get(Disk, disk_id, with_for_update=lock or None)
        authz.require(
            ctx, perm, tenant_id=disk.tenant_id if disk else None, kind="disk", ident=disk_id
        )
        assert disk is not None
        return disk

    # -- create ----------------------------------------------------------------------------

    async def create(self, ctx: RequestContext, req: dict[str, Any]) -> dict[str, Any]:
        authz.require(ctx, "disk:create")
        sources = [k for k in ("image_id", "snapshot_id", "source_disk_id") if req.get(k)]
        if len(sources) > 1:
            raise InvalidRequest.for_field(
                sources[1], "give at most one of image_id, snapshot_id, source_disk_id"
            )
        if not sources and not req.get("size_gib"):
            raise InvalidRequest.for_field("size_gib", "a blank disk needs its size in GiB")
        size = req.get("size_gib")
        tenant_id = ctx.principal.tenant_id
        async with self.db.uow() as uow:
            disk = await self.new_disk(uow, ctx, tenant_id, req, size)
            op = self.operations.create(
                uow, ctx, "disk.create", resource_type="disk", resource_id=disk.id,
                input={"source": self._volume_source(disk)},
            )  # fmt: skip
            await uow.commit()
        return {"operation": op, "disk": disk}

    @staticmethod
    def _volume_source(disk: Disk) -> list[str] | None:
        kind = {"image": "image", "snapshot": "snapshot", "disk": "volume"}.get(
            disk.source_type or ""
        )
        return [kind, disk.source_id or ""] if kind else None

    async def new_disk(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        tenant_id: str,
        req: dict[str, Any],
        size: int | None,
    ) -> Disk:
        """Validate the source, place the disk, take quota and pool room: one transaction."""
        storage_class = req.get("storage_class")
        host_id: str | None = None
        pool: StoragePool | None = None
        minimum = 1
        source_type: str | None = None
        source_id: str | None = None
        if req.get("image_id"):
            image = await uow.session.get(Image, req["image_id"])
            if image is None or not can_see(ctx, image):
                raise InvalidRequest.for_field("image_id", f"no image {req['image_id']}")
            if image.state != "available":
                raise Conflict(
                    f"image {image.id} is {image.state}", extra={"current_state": image.state}
                )
            minimum = max(image.min_disk_gib, -(-(image.virtual_size_bytes or 0) // 1024**3), 1)
            source_type, source_id = "image", image.id
        elif req.get("snapshot_id"):
            snap = await uow.session.get(Snapshot, req["snapshot_id"])
            if snap is None or not authz.visible(ctx.principal, snap.tenant_id):
                raise InvalidRequest.for_field("snapshot_id", f"no snapshot {req['snapshot_id']}")
            if snap.state != "available":
                raise Conflict(
                    f"snapshot {snap.id} is {snap.state}", extra={"current_state": snap.state}
                )
            if snap.vm_id is not None:
                raise Conflict(
                    f"snapshot {snap.id} is of VM {snap.vm_id}'s root disk, which lives with "
                    "its VM: roll the VM back to it, or make an image of the VM "
                    "(actions/export-image) to start new disks or VMs from",
                    extra={"vm_id": snap.vm_id},
                )
            parent = await uow.session.get(Disk, snap.disk_id)
            if parent is None or parent.state == "deleted":
                raise Conflict(f"the disk of snapshot {snap.id} is in the recycle bin or gone")
            minimum, pool_id, host_id = snap.size_gib, parent.pool_id, parent.host_id
            pool = await uow.session.get(StoragePool, pool_id)
            storage_class = storage_class or parent.storage_class
            source_type, source_id = "snapshot", snap.id
        elif req.get("source_disk_id"):
            parent = await self.load(uow, ctx, req["source_disk_id"], "disk:read")
            check_state(parent, "clone")
            minimum, host_id = parent.size_gib, parent.host_id
            pool = await uow.session.get(StoragePool, parent.pool_id)
            storage_class = storage_class or parent.storage_class
            source_type, source_id = "disk", parent.id
        size = size or minimum
        if not minimum <= size <= MAX_DISK_GIB:
            raise InvalidRequest.for_field(
                "size_gib", f"must be between {minimum} (the source's size) and {MAX_DISK_GIB}"
            )
        storage_class = storage_class or DEFAULT_CLASS
        if pool is None:
            pool = await self.pools.pool_for_class(uow, storage_class)
        elif storage_class not in (pool.storage_classes or []):
            raise InvalidRequest.for_field(
                "storage_class",
                f"a copy stays in its source's pool {pool.name}, which does not serve "
                f"{storage_class!r}",
            )
        if not pool.shared and host_id is None:
            host_id = await self._pick_host(uow, pool)
        name = req.get("name") or f"disk-{source_type or 'blank'}"
        if await uow.session.scalar(
            select(Disk.id).where(Disk.tenant_id == tenant_id, Disk.name == name)
        ):
            raise Conflict(f"a disk named {name!r} already exists", extra={"field": "name"})
        await self.quotas.consume(uow, tenant_id, "disks", 1)
        await self.quotas.consume(uow, tenant_id, "disk_gib", size)
        await self.pools.claim(uow, pool, size)
        disk = Disk(
            id=new_id("disk"),
            tenant_id=tenant_id,
            name=name,
            size_gib=size,
            storage_class=storage_class,
            pool_id=pool.id,
            host_id=host_id,
            source_type=source_type,
            source_id=source_id,
            vm_id=None,
            state="creating",
            snapshot_count=0,
            generation=1,
            observed_generation=0,
        )
        uow.session.add(disk)
        await uow.flush()
        return disk

    async def _pick_host(self, uow: UnitOfWork, pool: StoragePool) -> str:
        """The up host of the pool's clusters holding the fewest of its disks."""
        hosts = await up_hosts(uow, pool)
        if not hosts:
            raise Conflict(
                f"storage pool {pool.name} has no host that is up in its clusters",
                extra={"pool_id": pool.id},
            )
        counts = dict(
            (
                await uow.session.execute(
                    select(Disk.host_id, func.count())
                    .where(Disk.pool_id == pool.id)
                    .group_by(Disk.host_id)
                )
            ).all()
        )
        return min(hosts, key=lambda h: (counts.get(h.id, 0), h.id)).id

    # -- reads -----------------------------------------------------------------------------

    async def get(self, ctx: RequestContext, disk_id: str) -> Disk:
        async with self.db.uow(write=False) as uow:
            return await self.load(uow, ctx, disk_id, "disk:read")

    async def list(
        self,
        ctx: RequestContext,
        *,
        state: str | None = None,
        name: str | None = None,
        vm_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Disk]:
        authz.require(ctx, "disk:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(Disk.tenant_id == target)
        where.append(Disk.state == state if state else Disk.state != "deleted")
        if name:
            where.append(Disk.name == name)
        if vm_id:
            where.append(Disk.vm_id == vm_id)
        async with self.db.uow(write=False) as uow:
            return await page_of(uow.session, Disk, where, limit=limit, cursor=cursor)

    # -- actions ---------------------------------------------------------------------------

    async def act(
        self, ctx: RequestContext, disk_id: str, verb: str, args: dict[str, Any]
    ) -> tuple[Disk, Operation]:
        if verb == "clone":
            out = await self.create(ctx, {**args, "source_disk_id": disk_id})
            return out["disk"], out["operation"]
        async with self.db.uow() as uow:
            disk = await self.load(uow, ctx, disk_id, f"disk:{verb}", lock=True)
            check_state(disk, verb)
            op_input: dict[str, Any] = {"previous_state": disk.state}
            if verb == "attach":
                op_input |= await self._prepare_attach(uow, ctx, disk, str(args["vm_id"]))
            elif verb == "detach":
                op_input["vm_id"] = disk.vm_id
            elif verb == "resize":
                op_input |= await self._prepare_resize(uow, disk, int(args["size_gib"]))
            elif verb == "delete":
                await self.quotas.release(uow, disk.tenant_id, "disks", 1)
                await self.quotas.release(uow, disk.tenant_id, "disk_gib", disk.size_gib)
            elif verb == "restore":
                await self.quotas.consume(uow, disk.tenant_id, "disks", 1)
                await self.quotas.consume(uow, disk.tenant_id, "disk_gib", disk.size_gib)
            disk.state = ALLOWED[verb][1] or disk.state
            disk.generation += 1
            disk.reason = None
            op = self.operations.create(
                uow, ctx, f"disk.{verb}", resource_type="disk", resource_id=disk.id,
                input=op_input,
            )  # fmt: skip
            await uow.commit()
        return disk, op

    async def _prepare_attach(
        self, uow: UnitOfWork, ctx: RequestContext, disk: Disk, vm_id: str
    ) -> dict[str, Any]:
        vm = await uow.session.get(Vm, vm_id)
        if vm is None or vm.tenant_id != disk.tenant_id:
            raise InvalidRequest.for_field("vm_id", f"no VM {vm_id} in the disk's tenant")
        authz.require(ctx, "vm:read", tenant_id=vm.tenant_id, kind="VM", ident=vm.id)
        if vm.state not in ("running", "stopped"):
            raise Conflict(
                f"cannot attach disk {disk.id} to VM {vm.id}: the VM is {vm.state} "
                "(needs running or stopped)",
                extra={"current_state": vm.state, "vm_id": vm.id},
            )
        if not vm.host_id:
            raise Conflict(f"VM {vm.id} has no host yet", extra={"vm_id": vm.id})
        pool = await uow.session.get(StoragePool, disk.pool_id)
        assert pool is not None
        if not pool.shared and disk.host_id != vm.host_id:
            raise Conflict(
                f"disk {disk.id} lives in the {pool.backend} pool {pool.name} of host "
                f"{disk.host_id}; VM {vm.id} runs on host {vm.host_id}. A disk of a per-host "
                "pool attaches only to VMs on its host (shared pools such as Ceph attach "
                "anywhere)",
                extra={"disk_host_id": disk.host_id, "vm_host_id": vm.host_id, "vm_id": vm.id},
            )
        if pool.shared and vm.cluster_id not in (pool.cluster_ids or []):
            raise Conflict(
                f"storage pool {pool.name} does not serve cluster {vm.cluster_id} of VM {vm.id}",
                extra={"vm_id": vm.id},
            )
        if vm.state == "running":
            host = await uow.session.get(Host, vm.host_id)
            if host is not None and (host.capabilities or {}).get("hot_plug_disk") is False:
                raise Conflict(
                    f"host {host.id} cannot hot-plug disks; stop VM {vm.id} first",
                    extra={"current_state": vm.state, "vm_id": vm.id},
                )
        disk.vm_id = vm.id
        return {"vm_id": vm.id}

    async def _prepare_resize(self, uow: UnitOfWork, disk: Disk, size: int) -> dict[str, Any]:
        if size <= disk.size_gib or size > MAX_DISK_GIB:
            raise InvalidRequest.for_field(
                "size_gib",
                f"disks only grow: give more than the current {disk.size_gib} GiB "
                f"(at most {MAX_DISK_GIB})",
            )
        if disk.state == "in-use" and disk.vm_id:
            vm = await uow.session.get(Vm, disk.vm_id)
            host = await uow.session.get(Host, vm.host_id) if vm and vm.host_id else None
            if (
                vm is not None
                and vm.state == "running"
                and host is not None
                and (host.capabilities or {}).get("hot_plug_disk") is False
            ):
                raise Conflict(
                    f"disk {disk.id} is in use by running VM {vm.id} on a host that "
                    "cannot grow it online; stop the VM or detach the disk",
                    extra={"current_state": disk.state, "vm_id": vm.id},
                )
        pool = await uow.session.get(StoragePool, disk.pool_id)
        assert pool is not None
        grow = size - disk.size_gib
        await self.quotas.consume(uow, disk.tenant_id, "disk_gib", grow)
        await self.pools.claim(uow, pool, grow)
        previous = disk.size_gib
        disk.size_gib = size
        return {"size_gib": size, "from_gib": previous, "vm_id": disk.vm_id}

    # -- recycle bin -----------------------------------------------------------------------

    async def recycle_bin(self, ctx: RequestContext, tenant_id: str | None) -> Sequence[Disk]:
        authz.require(ctx, "recycle-bin:read")
        target = authz.tenant_filter(ctx, tenant_id)
        async with self.db.uow(write=False) as uow:
            stmt = select(Disk).where(Disk.state == "deleted").order_by(Disk.id.desc())
            if target:
                stmt = stmt.where(Disk.tenant_id == target)
            return list(await uow.session.scalars(stmt))

    async def purge(self, ctx: RequestContext, disk_id: str) -> Operation:
        async with self.db.uow() as uow:
            disk = await self.load(uow, ctx, disk_id, "recycle-bin:delete", lock=True)
            if disk.state != "deleted":
                raise Conflict(
                    f"disk {disk.id} is {disk.state}, not in the recycle bin",
                    extra={"current_state": disk.state},
                )
            disk.state = "purging"
            op = self.operations.create(
                uow, ctx, "disk.purge", resource_type="disk", resource_id=disk.id
            )
            await uow.commit()
        return op

    async def due_for_purge(self) -> Sequence[str]:
        async with self.db.uow(write=False) as uow:
            rows = await uow.session.scalars(
                select(Disk.id).where(Disk.state == "deleted", Disk.purge_after < utcnow())
            )
            return list(rows)

    def purge_after(self) -> Any:
        now = utcnow()
        return now, now + timedelta(seconds=self.recycle_seconds)
