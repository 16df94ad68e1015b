"""``alto disk``, ``alto snapshot``, ``alto storage-pool``: block storage (docs/storage.md).

Disk and snapshot changes are operations on the server (202): the commands wait for them
with a progress bar by default (``--wait``, or ``--no-wait`` to return at once). Storage
pools are the platform administrators' and change synchronously.
"""

from __future__ import annotations

from typing import Annotated

import typer

from altostack.cli.commands.common import YesOption, confirm, settle
from altostack.cli.commands.compute_common import WaitTimeoutOption, emit_rows
from altostack.cli.output import emit_object
from altostack.cli.state import OutputFormat, OutputOption, get_state
from altostack.client import path_of

disks = typer.Typer(help="Cloud disks: attach to VMs, grow, snapshot, clone.")
snapshots = typer.Typer(help="Snapshots of disks: roll back, or make new disks from them.")
pools = typer.Typer(help="Storage pools (platform administrators): backends for storage classes.")

DISKS, SNAPSHOTS, POOLS = "/v1/disks", "/v1/snapshots", "/v1/storage-pools"
DISK_COLUMNS = ["id", "name", "size_gib", "storage_class", "state", "vm_id", "host_id"]
SNAPSHOT_COLUMNS = ["id", "name", "disk_id", "size_gib", "state", "created_at"]
POOL_COLUMNS = ["id", "name", "backend", "storage_classes", "health", "capacity_bytes"]

NoWaitOption = Annotated[
    bool,
    typer.Option(
        "--no-wait/--wait", help="Return at once, or wait for the operation (the default)"
    ),
]
TenantOption = Annotated[str | None, typer.Option(help="Another tenant's (admins)")]


def _act(
    ctx: typer.Context,
    path: str,
    body: dict[str, object] | None,
    thing: str,
    no_wait: bool,
    timeout: float | None,
    output: OutputFormat | None,
    method: str = "POST",
) -> None:
    state = get_state(ctx, output)
    response = state.client().send(method, path, json=body)
    settle(state, response, thing, done="", wait=not no_wait, timeout=timeout)


# -- disks -----------------------------------------------------------------------------------


@disks.command("list")
def disk_list(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Option(help="Only those attached to this VM")] = None,
    state_: Annotated[str | None, typer.Option("--state", help="e.g. deleted")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """Disks, newest first (not those in the recycle bin unless ``--state deleted``)."""
    state = get_state(ctx, output)
    items = state.client().list_all(DISKS, vm_id=vm, state=state_, tenant_id=tenant_id)
    emit_rows(state, items, DISK_COLUMNS, title="disks", derive=dict)


@disks.command("create")
def disk_create(
    ctx: typer.Context,
    name: str,
    size: Annotated[int | None, typer.Option(help="GiB (default: the source's size)")] = None,
    storage_class: Annotated[str | None, typer.Option("--class", help="e.g. ssd")] = None,
    image: Annotated[str | None, typer.Option(help="From this image")] = None,
    snapshot: Annotated[str | None, typer.Option(help="From this snapshot")] = None,
    source: Annotated[str | None, typer.Option(help="A clone of this disk")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a disk: blank (``--size``), or from an image, a snapshot or another disk."""
    body: dict[str, object] = {"name": name}
    for key, value in (
        ("size_gib", size), ("storage_class", storage_class), ("image_id", image),
        ("snapshot_id", snapshot), ("source_disk_id", source),
    ):  # fmt: skip
        if value is not None:
            body[key] = value
    _act(ctx, DISKS, body, "disk", no_wait, timeout, output)


@disks.command("show")
def disk_show(ctx: typer.Context, disk_id: str, output: OutputOption = None) -> None:
    """One disk."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(DISKS, disk_id)))


@disks.command("attach")
def disk_attach(
    ctx: typer.Context,
    disk_id: str,
    vm: Annotated[str, typer.Option(help="The VM's id")],
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Attach to a VM: at once on a running one (hot-plug), at its next start otherwise."""
    path = path_of(DISKS, disk_id, "actions", "attach")
    _act(ctx, path, {"vm_id": vm}, "disk", no_wait, timeout, output)


@disks.command("detach")
def disk_detach(
    ctx: typer.Context,
    disk_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Detach from its VM (a running guest is asked to release it)."""
    path = path_of(DISKS, disk_id, "actions", "detach")
    _act(ctx, path, {}, "disk", no_wait, timeout, output)


@disks.command("resize")
def disk_resize(
    ctx: typer.Context,
    disk_id: str,
    size: Annotated[int, typer.Option(help="The new size in GiB (grow only)")],
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Grow a disk; online when attached to a running VM (the guest sees the new size)."""
    path = path_of(DISKS, disk_id, "actions", "resize")
    _act(ctx, path, {"size_gib": size}, "disk", no_wait, timeout, output)


@disks.command("clone")
def disk_clone(
    ctx: typer.Context,
    disk_id: str,
    name: Annotated[str, typer.Option(help="The new disk's name")],
    size: Annotated[int | None, typer.Option(help="GiB (default: the source's)")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """A new, independent disk with this one's data as of now."""
    body: dict[str, object] = {"name": name}
    if size is not None:
        body["size_gib"] = size
    _act(ctx, path_of(DISKS, disk_id, "actions", "clone"), body, "disk", no_wait, timeout, output)


@disks.command("restore")
def disk_restore(
    ctx: typer.Context,
    disk_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Bring a disk back from the recycle bin."""
    path = path_of(DISKS, disk_id, "actions", "restore")
    _act(ctx, path, {}, "disk", no_wait, timeout, output)


@disks.command("delete")
def disk_delete(
    ctx: typer.Context,
    disk_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """To the recycle bin (restore with ``alto disk restore``; purged after the retention)."""
    confirm(yes, f"Delete disk {disk_id} (to the recycle bin)?")
    _act(ctx, path_of(DISKS, disk_id), None, "disk", no_wait, timeout, output, method="DELETE")


# -- snapshots -------------------------------------------------------------------------------


@snapshots.command("list")
def snapshot_list(
    ctx: typer.Context,
    disk: Annotated[str | None, typer.Option(help="Only this disk's")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """Snapshots, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(SNAPSHOTS, disk_id=disk, tenant_id=tenant_id)
    emit_rows(state, items, SNAPSHOT_COLUMNS, title="snapshots", derive=dict)


@snapshots.command("create")
def snapshot_create(
    ctx: typer.Context,
    name: str,
    disk: Annotated[str, typer.Option(help="The disk's id")],
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Snapshot a disk (crash-consistent while its VM runs)."""
    _act(ctx, SNAPSHOTS, {"disk_id": disk, "name": name}, "snapshot", no_wait, timeout, output)


@snapshots.command("show")
def snapshot_show(ctx: typer.Context, snapshot_id: str, output: OutputOption = None) -> None:
    """One snapshot."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(SNAPSHOTS, snapshot_id)))


@snapshots.command("rollback")
def snapshot_rollback(
    ctx: typer.Context,
    snapshot_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Make the disk read as when the snapshot was taken (its VM stopped or detached)."""
    confirm(yes, f"Roll the disk back to {snapshot_id}? Later writes are lost.")
    path = path_of(SNAPSHOTS, snapshot_id, "actions", "rollback")
    _act(ctx, path, {}, "snapshot", no_wait, timeout, output)


@snapshots.command("delete")
def snapshot_delete(
    ctx: typer.Context,
    snapshot_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a snapshot (disks made from it keep their data)."""
    confirm(yes, f"Delete snapshot {snapshot_id}?")
    path = path_of(SNAPSHOTS, snapshot_id)
    _act(ctx, path, None, "snapshot", no_wait, timeout, output, method="DELETE")


# -- storage pools ---------------------------------------------------------------------------


@pools.command("list")
def pool_list(ctx: typer.Context, output: OutputOption = None) -> None:
    """Storage pools with their capacity and health."""
    state = get_state(ctx, output)
    items = state.client().list_all(POOLS)
    emit_rows(state, items, POOL_COLUMNS, title="storage pools", derive=dict)


@pools.command("show")
def pool_show(ctx: typer.Context, pool_id: str, output: OutputOption = None) -> None:
    """One pool, with what each host last reported."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(POOLS, pool_id)))


@pools.command("create")
def pool_create(
    ctx: typer.Context,
    name: str,
    backend: Annotated[str, typer.Option(help="local, ceph or sim")],
    storage_class: Annotated[list[str], typer.Option("--class", help="Served (repeatable)")],
    cluster: Annotated[list[str], typer.Option(help="A cluster using it (repeatable)")],
    ratio: Annotated[float, typer.Option(help="Allocation ratio (thin provisioning)")] = 1.0,
    output: OutputOption = None,
) -> None:
    """Declare a pool of a backend serving storage classes to clusters."""
    state = get_state(ctx, output)
    body = {"name": name, "backend": backend, "storage_classes": storage_class,
            "cluster_ids": cluster, "allocation_ratio": ratio}  # fmt: skip
    settle(state, state.client().send("POST", POOLS, json=body), None, done="")
