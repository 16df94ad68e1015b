"""Operation handlers for disks and snapshots: each drives one host agent's pool.

Handlers re-read the rows (level-triggered), send one idempotent command to the host that
reaches the volume (its own host on a per-host pool, the VM's host when attached, any up
host of the pool's clusters on a shared pool) and record the outcome. A failure no retry
can fix leaves the resource with a ``reason``: a failed attach or detach leaves the disk as
it was (the compute driver guarantees the VM is unchanged), anything else ``error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import delete, select, update

from altostack.controllers.compute import ComputeController
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.db.database import Database
from altostack.db.models_compute import Vm
from altostack.db.models_storage import Disk, Snapshot, StoragePool
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.services.context import SYSTEM, RequestContext
from altostack.services.disks import DiskService, up_hosts
from altostack.services.operations import OperationService
from altostack.services.quotas import QuotaService
from altostack.services.storage_pools import StoragePoolService

log = structlog.get_logger(__name__)

Handler = Callable[[OperationContext], Awaitable[dict[str, Any] | None]]
Failure = Callable[[OperationContext, str], Awaitable[None]]


class DiskController:
    def __init__(
        self,
        db: Database,
        compute: ComputeController,
        disks: DiskService,
        pools: StoragePoolService,
        quotas: QuotaService,
        operations: OperationService,
        *,
        max_attempts: int,
    ) -> None:
        self.operations = operations
        self.db = db
        self.compute = compute
        self.disks = disks
        self.pools = pools
        self.quotas = quotas
        self.max_attempts = max_attempts

    def register(self, registry: OperationRegistry) -> None:
        error = self._disk_error
        back = self._disk_back
        for kind, handler, on_fail in (
            ("disk.create", self.create, error),
            ("disk.attach", self.attach, self._attach_failed),
            ("disk.detach", self.detach, back),
            ("disk.resize", self.resize, error),
            ("disk.delete", self.delete, error),
            ("disk.restore", self.restore, error),
            ("disk.purge", self.purge, error),
            ("snapshot.create", self.snapshot, self._snapshot_error),
            ("snapshot.delete", self.delete_snapshot, self._snapshot_error),
            ("snapshot.rollback", self.rollback, self._rollback_failed),
        ):
            registry.register(kind, self._guarded(handler, on_fail))

    # ---- plumbing ----------------------------------------------------------------------
    def _guarded(self, handler: Handler, on_fail: Failure) -> Handler:
        async def run(ctx: OperationContext) -> dict[str, Any] | None:
            try:
                return await handler(ctx)
            except TemporaryError as exc:
                if ctx.attempt < self.max_attempts:
                    raise
                await on_fail(ctx, str(exc))
                raise PermanentError(str(exc), "AgentUnavailable") from exc
            except PermanentError as exc:
                await on_fail(ctx, str(exc))
                raise

        return run

    async def _set(self, disk_id: str | None, **changes: Any) -> Disk | None:
        async with self.db.uow() as uow:
            disk = await uow.session.get(Disk, disk_id) if disk_id else None
            if disk is None:
                return None
            for key, value in changes.items():
                setattr(disk, key, value)
            await uow.commit()
            return disk

    async def _disk_error(self, ctx: OperationContext, reason: str) -> None:
        disk_id = ctx.resource_id if ctx.resource_type == "disk" else ctx.input.get("disk_id")
        await self._set(disk_id, state="error", reason=reason)

    async def _disk_back(self, ctx: OperationContext, reason: str) -> None:
        await self._set(ctx.resource_id, state=ctx.input["previous_state"], reason=reason)

    async def _attach_failed(self, ctx: OperationContext, reason: str) -> None:
        await self._set(ctx.resource_id, state="available", vm_id=None, reason=reason)

    async def _snapshot_error(self, ctx: OperationContext, reason: str) -> None:
        async with self.db.uow() as uow:
            snap = await uow.session.get(Snapshot, ctx.resource_id)
            if snap is not None:
                snap.state, snap.reason = "error", reason
                await uow.commit()

    async def _rollback_failed(self, ctx: OperationContext, reason: str) -> None:
        if ctx.input.get("vm_id"):  # a root disk: the snapshot is still good, the VM stopped
            async with self.db.uow() as uow:
                snap = await uow.session.get(Snapshot, ctx.resource_id)
                if snap is not None:
                    snap.state, snap.reason = "available", f"the last rollback failed: {reason}"
                    await uow.commit()
            return
        await self._set(ctx.input.get("disk_id"), state="error", reason=reason)

    async def _disk(self, disk_id: str | None) -> Disk:
        async with self.db.uow(write=False) as uow:
            disk = await uow.session.get(Disk, disk_id) if disk_id else None
        if disk is None:
            raise PermanentError(f"disk {disk_id} no longer exists", "NotFound")
        return disk

    async def host_for(self, disk: Disk, vm_id: str | None = None) -> str:
        """The host whose agent reaches the disk's volume now."""
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, vm_id or disk.vm_id) if (vm_id or disk.vm_id) else None
            if vm is not None and vm.host_id:
                return vm.host_id
            if disk.host_id:
                return disk.host_id
            pool = await uow.session.get(StoragePool, disk.pool_id)
            hosts = await up_hosts(uow, pool) if pool is not None else []
        if not hosts:
            raise TemporaryError(f"no host of the pool of disk {disk.id} is up", delay=5.0)
        return hosts[0].id

    async def _call(self, host_id: str, action: str, **fields: Any) -> dict[str, Any]:
        return await self.compute.call(host_id, action, slow=4, **fields)

    # ---- disks -------------------------------------------------------------------------
    async def create(self, ctx: OperationContext) -> dict[str, Any]:
        disk = await self._disk(ctx.resource_id)
        if disk.state != "creating":
            return {"state": disk.state}
        reply = await self._call(
            await self.host_for(disk),
            "ensure_volume",
            volume_id=disk.id,
            size_gib=disk.size_gib,
            source=ctx.input.get("source"),
            generation=disk.generation,
        )
        await self._set(
            disk.id, state="available", reason=None, observed_generation=disk.generation
        )
        return {"volume": reply.get("volume")}

    async def attach(self, ctx: OperationContext) -> dict[str, Any]:
        disk = await self._disk(ctx.resource_id)
        vm_id = str(ctx.input["vm_id"])
        await self._call(
            await self.host_for(disk, vm_id),
            "attach_volume",
            vm_id=vm_id,
            volume_id=disk.id,
            generation=disk.generation,
        )
        await self._set(disk.id, state="in-use", observed_generation=disk.generation)
        return {"vm_id": vm_id, "state": "in-use"}

    async def detach(self, ctx: OperationContext) -> dict[str, Any]:
        disk = await self._disk(ctx.resource_id)
        vm_id = ctx.input.get("vm_id")
        if vm_id:
            await self._call(
                await self.host_for(disk, vm_id),
                "detach_volume",
                vm_id=vm_id,
                volume_id=disk.id,
                generation=disk.generation,
                timeout=30,
            )
        await self._set(disk.id, state="available", vm_id=None, observed_generation=disk.generation)
        return {"state": "available"}

    async def resize(self, ctx: OperationContext) -> dict[str, Any]:
        disk = await self._disk(ctx.resource_id)
        reply = await self._call(
            await self.host_for(disk),
            "resize_volume",
            volume_id=disk.id,
            size_gib=int(ctx.input["size_gib"]),
            vm_id=disk.vm_id,
        )
        await self._set(
            disk.id, state=ctx.input["previous_state"], observed_generation=disk.generation
        )
        return {"volume": reply.get("volume")}

    async def delete(self, ctx: OperationContext) -> dict[str, Any]:
        """To the recycle bin: the volume is kept until the purge."""
        deleted_at, purge_after = self.disks.purge_after()
        await self._set(
            ctx.resource_id, state="deleted", deleted_at=deleted_at, purge_after=purge_after
        )
        return {"state": "deleted"}

    async def restore(self, ctx: OperationContext) -> dict[str, Any]:
        disk = await self._disk(ctx.resource_id)
        reply = await self._call(await self.host_for(disk), "volume_info", volume_id=disk.id)
        if reply.get("volume") is None:
            raise PermanentError(f"the volume of disk {disk.id} is gone from its pool")
        await self._set(disk.id, state="available", deleted_at=None, purge_after=None)
        return {"state": "available"}

    async def purge(self, ctx: OperationContext) -> dict[str, Any]:
        """Destroy for good: the volume and its snapshots, their quota and pool room."""
        async with self.db.uow(write=False) as uow:
            disk = await uow.session.get(Disk, ctx.resource_id) if ctx.resource_id else None
        if disk is None:
            return {"purged": True}
        await self._call(await self.host_for(disk), "delete_volume", volume_id=disk.id)
        async with self.db.uow() as uow:
            row = await uow.session.get(Disk, disk.id)
            if row is not None:
                snaps = list(
                    await uow.session.scalars(select(Snapshot.id).where(Snapshot.disk_id == row.id))
                )
                await uow.session.execute(delete(Snapshot).where(Snapshot.disk_id == row.id))
                if snaps:
                    await self.quotas.release(uow, row.tenant_id, "snapshots", len(snaps))
                await self.pools.unclaim(uow, row.pool_id, row.size_gib)
                await uow.session.delete(row)
                await uow.commit()
        return {"purged": True}

    # ---- snapshots ---------------------------------------------------------------------
    async def _snap(self, snap_id: str | None) -> Snapshot:
        async with self.db.uow(write=False) as uow:
            snap = await uow.session.get(Snapshot, snap_id) if snap_id else None
        if snap is None:
            raise PermanentError(f"snapshot {snap_id} no longer exists", "NotFound")
        return snap

    async def _on_root(self, snap: Snapshot, action: str) -> None:
        """``action`` on the root disk a snapshot is of, by its VM's host agent."""
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, snap.vm_id) if snap.vm_id else None
        if vm is None or not vm.host_id:
            raise PermanentError(f"VM {snap.vm_id} no longer exists on a host", "NotFound")
        await self._call(vm.host_id, action, vm_id=vm.id, snapshot_id=snap.id)

    async def _snapshot_ready(self, snap_id: str, size_gib: int | None = None) -> None:
        async with self.db.uow() as uow:
            row = await uow.session.get(Snapshot, snap_id)
            if row is not None:
                row.state, row.reason = "available", None
                row.size_gib = size_gib or row.size_gib
                await uow.commit()

    async def snapshot(self, ctx: OperationContext) -> dict[str, Any]:
        snap = await self._snap(ctx.resource_id)
        if snap.vm_id is not None:  # a root disk: the compute driver keeps it
            await self._on_root(snap, "snapshot_root")
            await self._snapshot_ready(snap.id)
            return {"snapshot_id": snap.id}
        disk = await self._disk(snap.disk_id)
        reply = await self._call(
            await self.host_for(disk),
            "snapshot_volume",
            volume_id=disk.id,
            snapshot_id=snap.id,
            vm_id=disk.vm_id,
        )
        size = (reply.get("snapshot") or {}).get("size_gib")
        await self._snapshot_ready(snap.id, int(size) if size else None)
        return {"snapshot_id": snap.id}

    async def delete_snapshot(self, ctx: OperationContext) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            snap = await uow.session.get(Snapshot, ctx.resource_id) if ctx.resource_id else None
        if snap is None:
            return {"deleted": True}
        if snap.vm_id is not None:
            await self._on_root(snap, "delete_root_snapshot")
        else:
            disk = await self._disk(snap.disk_id)
            await self._call(
                await self.host_for(disk), "delete_volume_snapshot", snapshot_id=snap.id
            )
        async with self.db.uow() as uow:
            row = await uow.session.get(Snapshot, snap.id)
            if row is not None:
                await uow.session.delete(row)
                await uow.session.execute(
                    update(Disk)
                    .where(Disk.id == snap.disk_id, Disk.snapshot_count > 0)
                    .values(snapshot_count=Disk.snapshot_count - 1)
                    .execution_options(synchronize_session=False)
                )
                await self.quotas.release(uow, snap.tenant_id, "snapshots", 1)
                await uow.commit()
        return {"deleted": True}

    async def rollback(self, ctx: OperationContext) -> dict[str, Any]:
        snap = await self._snap(ctx.resource_id)
        if snap.vm_id is not None:
            await self._on_root(snap, "rollback_root")
            await self._snapshot_ready(snap.id)
            return {"vm_id": snap.vm_id}
        disk = await self._disk(snap.disk_id)
        reply = await self._call(
            await self.host_for(disk), "rollback_volume", volume_id=disk.id, snapshot_id=snap.id
        )
        size = int((reply.get("volume") or {}).get("size_gib") or disk.size_gib)
        async with self.db.uow() as uow:
            row = await uow.session.get(Disk, disk.id)
            if row is not None:
                shrink = row.size_gib - size
                if shrink > 0:  # the snapshot was taken before a resize: its size comes back
                    await self.quotas.release(uow, row.tenant_id, "disk_gib", shrink)
                    await self.pools.unclaim(uow, row.pool_id, shrink)
                    row.size_gib = size
                row.state = str(ctx.input.get("previous_state") or "available")
                row.observed_generation = row.generation
                await uow.commit()
        return {"disk_id": disk.id, "size_gib": size}

    # ---- housekeeping ------------------------------------------------------------------
    async def sweep(self) -> list[str]:
        """Queue the purge of disks past their time in the recycle bin; attachments to VMs
        that no longer exist are let go. Returns the disks queued."""
        async with self.db.uow() as uow:
            attached = list(
                await uow.session.scalars(
                    select(Disk).where(Disk.vm_id.is_not(None), Disk.state == "in-use")
                )
            )
            for disk in attached:
                if await uow.session.get(Vm, disk.vm_id) is None:
                    disk.vm_id, disk.state = None, "available"
            await uow.commit()
        queued = []
        for disk_id in await self.disks.due_for_purge():
            async with self.db.uow() as uow:
                due = await uow.session.get(Disk, disk_id, with_for_update=True)
                if due is None or due.state != "deleted":
                    continue
                due.state = "purging"
                self.operations.create(
                    uow, RequestContext(SYSTEM), "disk.purge", resource_type="disk",
                    resource_id=due.id, tenant_id=due.tenant_id,
                )  # fmt: skip
                await uow.commit()
            queued.append(disk_id)
        return queued
