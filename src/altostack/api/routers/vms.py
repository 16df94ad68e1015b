"""VMs, placement groups and the recycle bin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from altostack.api.compute_schemas import (
    Console,
    MigrateArgs,
    PasswordArgs,
    PlacementGroupCreate,
    PlacementGroupList,
    PlacementGroupOut,
    ReinstallArgs,
    ResizeArgs,
    StopArgs,
    VmCreate,
    VmOut,
)
from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, ListOf, OperationOut
from altostack.api.storage_schemas import DiskOut
from altostack.services.context import RequestContext
from altostack.services.disks import disk_view
from altostack.services.operations import operation_view
from altostack.services.vms import vm_view

router = APIRouter(tags=["vms"])


class VmAccepted(BaseModel):
    operation: OperationOut | None
    vm: VmOut


class VmBatchAccepted(BaseModel):
    operations: list[OperationOut]
    vms: list[VmOut]


def _op(op: Any) -> OperationOut | None:
    return OperationOut.model_validate(operation_view(op)) if op is not None else None


@router.post(
    "/v1/vms",
    status_code=202,
    response_model=VmAccepted | VmBatchAccepted,
    name="vm.create",
    openapi_extra=permission("vm:create"),
    responses=PROBLEMS,
)
async def create_vm(
    body: VmCreate, ctx: Ctx, c: C, response: Response
) -> VmAccepted | VmBatchAccepted:
    """Create VMs (``count`` up to 10): placement, quota and capacity are settled in this
    request; booting follows in the returned operation(s)."""
    created = await c.vms.create(ctx, body.model_dump())
    if body.count == 1:
        vm, op = created[0]
        response.headers["Location"] = f"/v1/vms/{vm.id}"
        return VmAccepted(operation=_op(op), vm=VmOut.model_validate(vm_view(vm)))
    return VmBatchAccepted(
        operations=[o for _, op in created if (o := _op(op)) is not None],
        vms=[VmOut.model_validate(vm_view(vm)) for vm, _ in created],
    )


@router.get(
    "/v1/vms",
    response_model=ListOf[VmOut],
    name="vm.list",
    openapi_extra=permission("vm:read"),
    responses=PROBLEMS,
)
async def list_vms(
    ctx: Ctx,
    c: C,
    page: Paging,
    state: Annotated[str | None, Query(max_length=16)] = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    host_id: Annotated[str | None, Query(max_length=40)] = None,
    placement_group_id: Annotated[str | None, Query(max_length=40)] = None,
    tag: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[VmOut]:
    """VMs newest first (not those in the recycle bin unless ``state=deleted``)."""
    tags = dict(t.split("=", 1) for t in tag or [] if "=" in t)
    found = await c.vms.list(
        ctx,
        state=state,
        name=name,
        host_id=host_id,
        placement_group_id=placement_group_id,
        tenant_id=tenant_id,
        tags=tags,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[VmOut](
        items=[VmOut.model_validate(vm_view(v)) for v in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/v1/vms/{id}",
    response_model=VmOut,
    name="vm.get",
    openapi_extra=permission("vm:read"),
    responses=PROBLEMS,
)
async def get_vm(id: str, ctx: Ctx, c: C) -> VmOut:
    return VmOut.model_validate(await c.vms.get(ctx, id))


async def _act(
    c: Any, ctx: RequestContext, vm_id: str, verb: str, args: dict[str, Any]
) -> VmAccepted:
    vm, op = await c.vms.act(ctx, vm_id, verb, args)
    return VmAccepted(operation=_op(op), vm=VmOut.model_validate(vm_view(vm)))


@router.delete(
    "/v1/vms/{id}",
    status_code=202,
    response_model=VmAccepted,
    name="vm.delete",
    openapi_extra=permission("vm:delete"),
    responses=PROBLEMS,
)
async def delete_vm(id: str, ctx: Ctx, c: C) -> VmAccepted:
    """Stop the VM and move it to the recycle bin (quota freed now, restore re-checks it)."""
    return await _act(c, ctx, id, "delete", {})


@router.post(
    "/v1/vms/{id}/actions/start",
    status_code=202,
    response_model=VmAccepted,
    name="vm.start",
    openapi_extra=permission("vm:start"),
    responses=PROBLEMS,
)
async def start_vm(id: str, ctx: Ctx, c: C) -> VmAccepted:
    """Start; a running VM is a no-op (``operation`` null)."""
    return await _act(c, ctx, id, "start", {})


@router.post(
    "/v1/vms/{id}/actions/stop",
    status_code=202,
    response_model=VmAccepted,
    name="vm.stop",
    openapi_extra=permission("vm:stop"),
    responses=PROBLEMS,
)
async def stop_vm(id: str, ctx: Ctx, c: C, body: StopArgs | None = None) -> VmAccepted:
    """Graceful (ACPI) for ``timeout`` seconds, then forced; ``force`` skips the wait."""
    return await _act(c, ctx, id, "stop", (body or StopArgs()).model_dump())


@router.post(
    "/v1/vms/{id}/actions/reboot",
    status_code=202,
    response_model=VmAccepted,
    name="vm.reboot",
    openapi_extra=permission("vm:reboot"),
    responses=PROBLEMS,
)
async def reboot_vm(id: str, ctx: Ctx, c: C) -> VmAccepted:
    return await _act(c, ctx, id, "reboot", {})


@router.post(
    "/v1/vms/{id}/actions/reinstall",
    status_code=202,
    response_model=VmAccepted,
    name="vm.reinstall",
    openapi_extra=permission("vm:reinstall"),
    responses=PROBLEMS,
)
async def reinstall_vm(id: str, ctx: Ctx, c: C, body: ReinstallArgs | None = None) -> VmAccepted:
    """New root disk from the image (the same one by default); the VM ends stopped."""
    return await _act(c, ctx, id, "reinstall", (body or ReinstallArgs()).model_dump())


@router.post(
    "/v1/vms/{id}/actions/resize",
    status_code=202,
    response_model=VmAccepted,
    name="vm.resize",
    openapi_extra=permission("vm:resize"),
    responses=PROBLEMS,
)
async def resize_vm(id: str, body: ResizeArgs, ctx: Ctx, c: C) -> VmAccepted:
    """Grow a running VM live where its host can; shrinking a running VM (or a host that
    cannot hot-add) needs ``allow_restart``."""
    return await _act(c, ctx, id, "resize", body.model_dump())


@router.post(
    "/v1/vms/{id}/actions/migrate",
    status_code=202,
    response_model=VmAccepted,
    name="vm.migrate",
    openapi_extra=permission("vm:migrate"),
    responses=PROBLEMS,
)
async def migrate_vm(id: str, body: MigrateArgs, ctx: Ctx, c: C) -> VmAccepted:
    """Move the VM to another host (platform administrators): live when it runs, cold
    (disks copied, it stays stopped) when it is stopped. It shows ``migrating`` until
    done; on failure it stays where it was, as it was."""
    return await _act(c, ctx, id, "migrate", body.model_dump())


@router.post(
    "/v1/vms/{id}/actions/reset-password",
    status_code=202,
    response_model=VmAccepted,
    name="vm.reset-password",
    openapi_extra=permission("vm:reset-password"),
    responses=PROBLEMS,
)
async def reset_password(id: str, body: PasswordArgs, ctx: Ctx, c: C) -> VmAccepted:
    return await _act(c, ctx, id, "reset-password", body.model_dump())


@router.post(
    "/v1/vms/{id}/actions/restore",
    status_code=202,
    response_model=VmAccepted,
    name="vm.restore",
    openapi_extra=permission("vm:restore"),
    responses=PROBLEMS,
)
async def restore_vm(id: str, ctx: Ctx, c: C) -> VmAccepted:
    """Back from the recycle bin, stopped; quota and host room are checked again."""
    return await _act(c, ctx, id, "restore", {})


@router.post(
    "/v1/vms/{id}/actions/console",
    response_model=Console,
    name="vm.console",
    openapi_extra=permission("vm:console"),
    responses=PROBLEMS,
)
async def console(id: str, ctx: Ctx, c: C) -> Console:
    """A VNC console URL and a token valid for 300 s."""
    return Console.model_validate(await c.vms.console(ctx, id))


@router.get(
    "/v1/recycle-bin",
    response_model=ListOf[VmOut | DiskOut],
    name="recycle-bin.list",
    openapi_extra=permission("recycle-bin:read"),
    responses=PROBLEMS,
)
async def recycle_bin(
    ctx: Ctx, c: C, tenant_id: Annotated[str | None, Query(max_length=40)] = None
) -> ListOf[VmOut | DiskOut]:
    """Deleted VMs and disks, and when they will be purged."""
    vms = await c.vms.recycle_bin(ctx, tenant_id)
    disks = await c.disks.recycle_bin(ctx, tenant_id)
    items: list[VmOut | DiskOut] = [VmOut.model_validate(vm_view(v)) for v in vms]
    items += [DiskOut.model_validate(disk_view(d)) for d in disks]
    return ListOf[VmOut | DiskOut](items=items)


@router.delete(
    "/v1/recycle-bin/{id}",
    status_code=202,
    response_model=OperationOut,
    name="recycle-bin.delete",
    openapi_extra=permission("recycle-bin:delete"),
    responses=PROBLEMS,
)
async def purge(id: str, ctx: Ctx, c: C) -> OperationOut:
    """Destroy a deleted VM or disk now (its data too); this cannot be undone."""
    service = c.disks if id.startswith("disk-") else c.vms
    return OperationOut.model_validate(operation_view(await service.purge(ctx, id)))


@router.post(
    "/v1/placement-groups",
    status_code=201,
    response_model=PlacementGroupOut,
    name="placement-group.create",
    openapi_extra=permission("placement-group:create"),
    responses=PROBLEMS,
)
async def create_group(body: PlacementGroupCreate, ctx: Ctx, c: C) -> PlacementGroupOut:
    out = await c.placement.create_group(ctx, body.name, body.policy, body.mode)
    return PlacementGroupOut.model_validate(out)


@router.get(
    "/v1/placement-groups",
    response_model=PlacementGroupList,
    name="placement-group.list",
    openapi_extra=permission("placement-group:read"),
    responses=PROBLEMS,
)
async def list_groups(
    ctx: Ctx, c: C, tenant_id: Annotated[str | None, Query(max_length=40)] = None
) -> PlacementGroupList:
    items = await c.placement.list_groups(ctx, tenant_id)
    return PlacementGroupList(items=[PlacementGroupOut.model_validate(g) for g in items])


@router.get(
    "/v1/placement-groups/{id}",
    response_model=PlacementGroupOut,
    name="placement-group.get",
    openapi_extra=permission("placement-group:read"),
    responses=PROBLEMS,
)
async def get_group(id: str, ctx: Ctx, c: C) -> PlacementGroupOut:
    return PlacementGroupOut.model_validate(await c.placement.get_group(ctx, id))


@router.delete(
    "/v1/placement-groups/{id}",
    status_code=204,
    name="placement-group.delete",
    openapi_extra=permission("placement-group:delete"),
    responses=PROBLEMS,
)
async def delete_group(id: str, ctx: Ctx, c: C) -> Response:
    await c.placement.delete_group(ctx, id)
    return Response(status_code=204)
