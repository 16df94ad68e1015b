"""Snapshots (``snap-…``) of disks: create (crash-consistent while the VM runs), list per
disk, roll back, delete; a new disk from one is ``POST /v1/disks {"snapshot_id"}``.

The per-disk limit is a conditional UPDATE of the disk's ``snapshot_count`` (``< limit``),
and the tenant's ``snapshots`` quota one of its usage row, both in the request's
transaction: twenty concurrent requests on one disk can never leave more than the limit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, update

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
            await self.quotas.consume(uow, disk.tenant_id, "snapshots", 1)
            snap = Snapshot(
                id=new_id("snap"),
                tenant_id=disk.tenant_id,
                disk_id=disk.id,
                name=name,
                size_gib=disk.size_gib,
                state="creating",
            )
            uow.session.add(snap)
            op = self.operations.create(
                uow, ctx, "snapshot.create", resource_type="snapshot", resource_id=snap.id,
                input={"disk_id": disk.id},
            )  # fmt: skip
            await uow.commit()
        return {"operation": op, "snapshot": snap}

    async def get(self, ctx: RequestContext, snap_id: str) -> Snapshot:
        async with self.db.uow(write=False) as uow:
            return await self.load(uow, ctx, snap_id, "snapshot:read")

    async def list(
        self,
        ctx: RequestContext,
        *,
        disk_id: str | None = None,
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
