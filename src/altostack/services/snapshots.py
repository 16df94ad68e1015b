"""Snapshots (``snap-…``) of disks: create (crash-consistent while the VM runs), list per
disk, roll back, delete; a new disk from one is ``POST /v1/disks {"snapshot_id"}``.

A VM's root disk is not a ``disk-…`` resource (its host's compute driver keeps it), so its
snapshots name the VM instead (``{"vm_id"}``): kept inside the root disk by the driver,
same limit per VM, rolled back only while the VM is stopped, gone with a reinstall (a new
root disk) or the VM's purge.

The per-disk limit is a conditional UPDATE of the disk's ``snapshot_count`` (``< limit``),
and the tenant's ``snapshots`` quota one of its usage row, both in the request's
transaction: twenty concurrent requests on one disk can never leave more than the limit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select, update

from altostack.db.database import Database
from altostack.db.models import Operation
from altostack.db.models_compute import Vm
from altostack.db.models_storage import Disk, Snapshot
from altostack.db.repositories import Page, page_of
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.disks import ALLOWED, DiskService, check_state
from altostack.services.operations import OperationService
from altostack.services.quotas import QuotaService

DEFAULT_SNAPSHOT_LIMIT = 10


def snapshot_view(snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id,
        "tenant_id": snap.tenant_id,
        "disk_id": snap.disk_id,
        "vm_id": snap.vm_id,
        "name": snap.name,
        "size_gib": snap.size_gib,
        "state": snap.state,
        "reason": snap.reason,
        "created_at": snap.created_at,
    }


class SnapshotService:
    def __init__(
        self,
        db: Database,
        operations: OperationService,
        quotas: QuotaService,
        disks: DiskService,
        *,
        per_disk_limit: int = DEFAULT_SNAPSHOT_LIMIT,
    ) -> None:
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.disks = disks
        self.per_disk_limit = per_disk_limit

    async def load(
        self, uow: UnitOfWork, ctx: RequestContext, snap_id: str, perm: str, *, lock: bool = False
    ) -> Snapshot:
        snap = await uow.session.get(Snapshot, snap_id, with_for_update=lock or None)
        authz.require(
            ctx, perm, tenant_id=snap.tenant_id if snap else None, kind="snapshot", ident=snap_id
        )
        assert snap is not None
        return snap

    async def create_any(
        self, ctx: RequestContext, disk_id: str | None, vm_id: str | None, name: str
    ) -> dict[str, Any]:
        """Of a data disk or of a VM's root disk: exactly one of the two."""
        authz.require(ctx, "snapshot:create")
        if vm_id is not None and disk_id is None:
            return await self.create_of_root(ctx, vm_id, name)
        if disk_id is not None and vm_id is None:
            return await self.create(ctx, disk_id, name)
        raise InvalidRequest.for_field("disk_id", "give exactly one of disk_id and vm_id")

    async def create_of_root(self, ctx: RequestContext, vm_id: str, name: str) -> dict[str, Any]:
        """A snapshot of ``vm_id``'s root disk (running or stopped). The VM's row is
        locked while its snapshots are counted, so concurrent requests keep the limit."""
        authz.require(ctx, "snapshot:create")
        async with self.db.uow() as uow:
            vm = await uow.session.get(Vm, vm_id, with_for_update=True)
            if vm is None or not authz.visible(ctx.principal, vm.tenant_id):
                raise InvalidRequest.for_field("vm_id", f"no VM {vm_id}")
            if vm.state not in ("running", "stopped") or not vm.host_id:
                raise Conflict(
                    f"cannot snapshot the root disk of VM {vm.id}: it is {vm.state}",
                    extra={"current_state": vm.state},
                )
            limit = self.per_disk_limit
            count = await uow.session.scalar(
                select(func.count()).select_from(Snapshot).where(Snapshot.vm_id == vm.id)
            )
            if (count or 0) >= limit:
                raise Conflict(
                    f"the root disk of VM {vm.id} already has {limit} snapshots, the limit "
                    "per disk; delete one first",
                    extra={"limit": limit, "vm_id": vm.id},
                )
            out = await self._insert(
                uow, ctx, vm.tenant_id, name, vm.root_disk_gib, {"vm_id": vm.id}
            )
            await uow.commit()
        return out

    async def create(self, ctx: RequestContext, disk_id: str, name: str) -> dict[str, Any]:
        authz.require(ctx, "snapshot:create")
        async with self.db.uow() as uow:
            disk = await uow.session.get(Disk, disk_id)
            if disk is None or not authz.visible(ctx.principal, disk.tenant_id):
                raise InvalidRequest.for_field("disk_id", f"no disk {disk_id}")
            check_state(disk, "snapshot")
            limit = self.per_disk_limit
            taken = await uow.session.execute(
                update(Disk)
                .where(Disk.id == disk.id, Disk.snapshot_count < limit)
                .values(snapshot_count=Disk.snapshot_count + 1)
                .execution_options(synchronize_session=False)
            )
            if not getattr(taken, "rowcount", 0):
                raise Conflict(
                    f"disk {disk.id} already has {limit} snapshots, the limit per disk; "
                    "delete one first",
                    extra={"limit": limit, "disk_id": disk.id},
                )
            out = await self._insert(
                uow, ctx, disk.tenant_id, name, disk.size_gib, {"disk_id": disk.id}
            )
            await uow.commit()
        return out

    async def _insert(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        tenant_id: str,
        name: str,
        size_gib: int,
        of: dict[str, str],
    ) -> dict[str, Any]:
        """The quota taken, the row and its ``snapshot.create`` operation; ``of`` names
        what it is of (``disk_id`` or ``vm_id``), in the row and the operation's input."""
        await self.quotas.consume(uow, tenant_id, "snapshots", 1)
        snap = Snapshot(
            id=new_id("snap"), tenant_id=tenant_id, name=name, size_gib=size_gib,
            state="creating", **of,
        )  # fmt: skip
        uow.session.add(snap)
        op = self.operations.create(
            uow, ctx, "snapshot.create", resource_type="snapshot", resource_id=snap.id,
            input=dict(of),
        )  # fmt: skip
        return {"operation": op, "snapshot": snap}

    async def get(self, ctx: RequestContext, snap_id: str) -> Snapshot:
        async with self.db.uow(write=False) as uow:
            return await self.load(uow, ctx, snap_id, "snapshot:read")

    async def list(
        self,
        ctx: RequestContext,
        *,
        disk_id: str | None = None,
        vm_id: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Snapshot]:
        authz.require(ctx, "snapshot:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(Snapshot.tenant_id == target)
        if disk_id:
            where.append(Snapshot.disk_id == disk_id)
        if vm_id:
            where.append(Snapshot.vm_id == vm_id)
        async with self.db.uow(write=False) as uow:
            return await page_of(uow.session, Snapshot, where, limit=limit, cursor=cursor)

    async def delete(self, ctx: RequestContext, snap_id: str) -> tuple[Snapshot, Operation]:
        async with self.db.uow() as uow:
            snap = await self.load(uow, ctx, snap_id, "snapshot:delete", lock=True)
            if snap.state not in ("available", "error"):
                raise Conflict(
                    f"cannot delete snapshot {snap.id}: it is {snap.state}",
                    extra={"current_state": snap.state},
                )
            snap.state = "deleting"
            op = self.operations.create(
                uow, ctx, "snapshot.delete", resource_type="snapshot", resource_id=snap.id
            )
            await uow.commit()
        return snap, op

    async def rollback(self, ctx: RequestContext, snap_id: str) -> tuple[Snapshot, Operation]:
        """The disk must be detached, or its VM stopped: a running guest would see its
        disk change under it. Anything else is a 409 naming the state in the way."""
        async with self.db.uow() as uow:
            snap = await self.load(uow, ctx, snap_id, "snapshot:rollback", lock=True)
            if snap.state != "available":
                raise Conflict(
                    f"cannot roll back to snapshot {snap.id}: it is {snap.state}",
                    extra={"current_state": snap.state},
                )
            if snap.vm_id is not None:
                return snap, await self._rollback_root(uow, ctx, snap)
            disk = await uow.session.get(Disk, snap.disk_id, with_for_update=True)
            assert disk is not None
            check_state(disk, "rollback")
            if disk.state == "in-use" and disk.vm_id:
                vm = await uow.session.get(Vm, disk.vm_id)
                if vm is not None and vm.state != "stopped":
                    raise Conflict(
                        f"cannot roll back disk {disk.id}: VM {vm.id} using it is {vm.state}; "
                        "stop the VM or detach the disk first",
                        extra={"current_state": vm.state, "vm_id": vm.id, "disk_id": disk.id},
                    )
            previous = disk.state
            disk.state = ALLOWED["rollback"][1] or disk.state
            disk.generation += 1
            op = self.operations.create(
                uow, ctx, "snapshot.rollback", resource_type="snapshot", resource_id=snap.id,
                input={"disk_id": disk.id, "previous_state": previous},
            )  # fmt: skip
            await uow.commit()
        return snap, op

    async def _rollback_root(
        self, uow: UnitOfWork, ctx: RequestContext, snap: Snapshot
    ) -> Operation:
        """The VM must be stopped; the snapshot shows ``restoring`` meanwhile, which keeps
        the VM from starting until its disk is back."""
        vm = await uow.session.get(Vm, snap.vm_id, with_for_update=True)
        if vm is None or vm.state != "stopped":
            state = vm.state if vm else "gone"
            raise Conflict(
                f"cannot roll back the root disk of VM {snap.vm_id}: it is {state}; stop it first",
                extra={"current_state": state, "vm_id": snap.vm_id},
            )
        snap.state = "restoring"
        op = self.operations.create(
            uow, ctx, "snapshot.rollback", resource_type="snapshot", resource_id=snap.id,
            input={"vm_id": vm.id},
        )  # fmt: skip
        await uow.commit()
        return op
