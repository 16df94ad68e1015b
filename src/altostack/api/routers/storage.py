"""``/v1/storage-pools`` (platform administrators), ``/v1/disks`` and ``/v1/snapshots``.

Everything that touches a pool is an operation (202 with ``{"operation", <thing>}``);
pools themselves are bookkeeping (201/200/204)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, ListOf, OperationOut
from altostack.api.storage_schemas import (
    DiskAccepted,
    DiskAttach,
    DiskClone,
    DiskCreate,
    DiskOut,
    DiskResize,
    SnapshotAccepted,
    SnapshotCreate,
    SnapshotOut,
    StoragePoolCreate,
    StoragePoolOut,
    StoragePoolUpdate,
)
from altostack.services.disks import disk_view
from altostack.services.operations import operation_view
from altostack.services.snapshots import snapshot_view

router = APIRouter(tags=["storage"])


def _disk_accepted(disk: Any, op: Any) -> DiskAccepted:
    return DiskAccepted(
        operation=OperationOut.model_validate(operation_view(op)),
        disk=DiskOut.model_validate(disk_view(disk)),
    )


def _snap_accepted(snap: Any, op: Any) -> SnapshotAccepted:
    return SnapshotAccepted(
        operation=OperationOut.model_validate(operation_view(op)),
        snapshot=SnapshotOut.model_validate(snapshot_view(snap)),
    )


# -- storage pools ---------------------------------------------------------------------------


@router.post(
    "/v1/storage-pools",
    status_code=201,
    response_model=StoragePoolOut,
    name="storage-pool.create",
    openapi_extra=permission("storage-pool:create"),
    responses=PROBLEMS,
)
async def create_pool(body: StoragePoolCreate, ctx: Ctx, c: C) -> StoragePoolOut:
    """A pool of a backend serving storage classes to clusters; a class maps to one pool."""
    return StoragePoolOut.model_validate(await c.storage_pools.create(ctx, body.model_dump()))


@router.get(
    "/v1/storage-pools",
    response_model=ListOf[StoragePoolOut],
    name="storage-pool.list",
    openapi_extra=permission("storage-pool:read"),
    responses=PROBLEMS,
)
async def list_pools(ctx: Ctx, c: C) -> ListOf[StoragePoolOut]:
    pools = await c.storage_pools.list_all(ctx)
    return ListOf[StoragePoolOut](items=[StoragePoolOut.model_validate(p) for p in pools])


@router.get(
    "/v1/storage-pools/{id}",
    response_model=StoragePoolOut,
    name="storage-pool.get",
    openapi_extra=permission("storage-pool:read"),
    responses=PROBLEMS,
)
async def get_pool(id: str, ctx: Ctx, c: C) -> StoragePoolOut:
    """Capacity, use and health as the pool's hosts last reported them."""
    return StoragePoolOut.model_validate(await c.storage_pools.get(ctx, id))


@router.patch(
    "/v1/storage-pools/{id}",
    response_model=StoragePoolOut,
    name="storage-pool.update",
    openapi_extra=permission("storage-pool:update"),
    responses=PROBLEMS,
)
async def update_pool(id: str, body: StoragePoolUpdate, ctx: Ctx, c: C) -> StoragePoolOut:
    return StoragePoolOut.model_validate(
        await c.storage_pools.update(ctx, id, body.model_dump(exclude_unset=True))
    )


@router.delete(
    "/v1/storage-pools/{id}",
    status_code=204,
    name="storage-pool.delete",
    openapi_extra=permission("storage-pool:delete"),
    responses=PROBLEMS,
)
async def delete_pool(id: str, ctx: Ctx, c: C) -> Response:
    """Refused (409) while the pool holds disks."""
    await c.storage_pools.delete(ctx, id)
    return Response(status_code=204)


# -- disks -----------------------------------------------------------------------------------


@router.post(
    "/v1/disks",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.create",
    openapi_extra=permission("disk:create"),
    responses=PROBLEMS,
)
async def create_disk(body: DiskCreate, ctx: Ctx, c: C, response: Response) -> DiskAccepted:
    """Blank, or from ``image_id`` | ``snapshot_id`` | ``source_disk_id`` (a clone)."""
    out = await c.disks.create(ctx, body.model_dump())
    response.headers["Location"] = f"/v1/disks/{out['disk'].id}"
    return _disk_accepted(out["disk"], out["operation"])


@router.get(
    "/v1/disks",
    response_model=ListOf[DiskOut],
    name="disk.list",
    openapi_extra=permission("disk:read"),
    responses=PROBLEMS,
)
async def list_disks(
    ctx: Ctx,
    c: C,
    page: Paging,
    state: Annotated[str | None, Query(max_length=16)] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    vm_id: Annotated[str | None, Query(max_length=40)] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[DiskOut]:
    """Newest first; not those in the recycle bin unless ``state=deleted``."""
    found = await c.disks.list(
        ctx, state=state, name=name, vm_id=vm_id, tenant_id=tenant_id,
        limit=page.limit, cursor=page.cursor,
    )  # fmt: skip
    return ListOf[DiskOut](
        items=[DiskOut.model_validate(disk_view(d)) for d in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/disks/{id}",
    response_model=DiskOut,
    name="disk.get",
    openapi_extra=permission("disk:read"),
    responses=PROBLEMS,
)
async def get_disk(id: str, ctx: Ctx, c: C) -> DiskOut:
    return DiskOut.model_validate(disk_view(await c.disks.get(ctx, id)))


@router.delete(
    "/v1/disks/{id}",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.delete",
    openapi_extra=permission("disk:delete"),
    responses=PROBLEMS,
)
async def delete_disk(id: str, ctx: Ctx, c: C) -> DiskAccepted:
    """To the recycle bin (quota freed now, the data kept until the purge); detach first."""
    return _disk_accepted(*await c.disks.act(ctx, id, "delete", {}))


@router.post(
    "/v1/disks/{id}/actions/attach",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.attach",
    openapi_extra=permission("disk:attach"),
    responses=PROBLEMS,
)
async def attach_disk(id: str, body: DiskAttach, ctx: Ctx, c: C) -> DiskAccepted:
    """Hot on a running VM, at the next start on a stopped one."""
    return _disk_accepted(*await c.disks.act(ctx, id, "attach", body.model_dump()))


@router.post(
    "/v1/disks/{id}/actions/detach",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.detach",
    openapi_extra=permission("disk:detach"),
    responses=PROBLEMS,
)
async def detach_disk(id: str, ctx: Ctx, c: C) -> DiskAccepted:
    return _disk_accepted(*await c.disks.act(ctx, id, "detach", {}))


@router.post(
    "/v1/disks/{id}/actions/resize",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.resize",
    openapi_extra=permission("disk:resize"),
    responses=PROBLEMS,
)
async def resize_disk(id: str, body: DiskResize, ctx: Ctx, c: C) -> DiskAccepted:
    """Grow only; online on a running VM (the guest sees the new size)."""
    return _disk_accepted(*await c.disks.act(ctx, id, "resize", body.model_dump()))


@router.post(
    "/v1/disks/{id}/actions/clone",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.clone",
    openapi_extra=permission("disk:create"),
    responses=PROBLEMS,
)
async def clone_disk(id: str, body: DiskClone, ctx: Ctx, c: C) -> DiskAccepted:
    """A new independent disk with this one's data now (``disk`` is the new one)."""
    return _disk_accepted(*await c.disks.act(ctx, id, "clone", body.model_dump()))


@router.post(
    "/v1/disks/{id}/actions/restore",
    status_code=202,
    response_model=DiskAccepted,
    name="disk.restore",
    openapi_extra=permission("disk:restore"),
    responses=PROBLEMS,
)
async def restore_disk(id: str, ctx: Ctx, c: C) -> DiskAccepted:
    """Back from the recycle bin (quota checked again)."""
    return _disk_accepted(*await c.disks.act(ctx, id, "restore", {}))


# -- snapshots -------------------------------------------------------------------------------


@router.post(
    "/v1/snapshots",
    status_code=202,
    response_model=SnapshotAccepted,
    name="snapshot.create",
    openapi_extra=permission("snapshot:create"),
    responses=PROBLEMS,
)
async def create_snapshot(
    body: SnapshotCreate, ctx: Ctx, c: C, response: Response
) -> SnapshotAccepted:
    """Of a data disk (``disk_id``) or a VM's root disk (``vm_id``): crash-consistent
    while the VM runs; 409 past the per-disk limit."""
    out = await c.snapshots.create_any(ctx, body.disk_id, body.vm_id, body.name)
    response.headers["Location"] = f"/v1/snapshots/{out['snapshot'].id}"
    return _snap_accepted(out["snapshot"], out["operation"])


@router.get(
    "/v1/snapshots",
    response_model=ListOf[SnapshotOut],
    name="snapshot.list",
    openapi_extra=permission("snapshot:read"),
    responses=PROBLEMS,
)
async def list_snapshots(
    ctx: Ctx,
    c: C,
    page: Paging,
    disk_id: Annotated[str | None, Query(max_length=40)] = None,
    vm_id: Annotated[str | None, Query(max_length=40, description="root disk of")] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[SnapshotOut]:
    found = await c.snapshots.list(
        ctx,
        disk_id=disk_id,
        vm_id=vm_id,
        tenant_id=tenant_id,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[SnapshotOut](
        items=[SnapshotOut.model_validate(snapshot_view(s)) for s in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/snapshots/{id}",
    response_model=SnapshotOut,
    name="snapshot.get",
    openapi_extra=permission("snapshot:read"),
    responses=PROBLEMS,
)
async def get_snapshot(id: str, ctx: Ctx, c: C) -> SnapshotOut:
    return SnapshotOut.model_validate(snapshot_view(await c.snapshots.get(ctx, id)))


@router.delete(
    "/v1/snapshots/{id}",
    status_code=202,
    response_model=SnapshotAccepted,
    name="snapshot.delete",
    openapi_extra=permission("snapshot:delete"),
    responses=PROBLEMS,
)
async def delete_snapshot(id: str, ctx: Ctx, c: C) -> SnapshotAccepted:
    return _snap_accepted(*await c.snapshots.delete(ctx, id))


@router.post(
    "/v1/snapshots/{id}/actions/rollback",
    status_code=202,
    response_model=SnapshotAccepted,
    name="snapshot.rollback",
    openapi_extra=permission("snapshot:rollback"),
    responses=PROBLEMS,
)
async def rollback_snapshot(id: str, ctx: Ctx, c: C) -> SnapshotAccepted:
    """The disk reads as when the snapshot was taken (size too). Its VM must be stopped,
    or the disk detached: a 409 names the state in the way otherwise."""
    return _snap_accepted(*await c.snapshots.rollback(ctx, id))
