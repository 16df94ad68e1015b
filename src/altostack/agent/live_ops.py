"""Agent commands for disks, snapshots and live migration (the optional driver features).

A migration spans two agents; whoever coordinates it (a controller) sends, in order:
``migration_manifest`` to the source, ``prepare_incoming`` (with that manifest) to the
destination, ``migrate_vm`` (with the destination's target) to the source, then
``finish_incoming`` or, after a failure, ``abort_incoming`` to the destination. Every
payload is plain JSON; the driver errors come back typed like the other commands'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from altostack.agent.codec import status_to_dict
from altostack.drivers.compute.base import (
    ComputeDriver,
    DiskSpec,
    IncomingMigration,
    MigrationManifest,
)
from altostack.drivers.errors import InvalidSpec

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _disk(d: dict[str, Any]) -> DiskSpec:
    return DiskSpec(
        id=str(d["id"]),
        path=str(d["path"]),
        format=d.get("format", "qcow2"),
        read_only=bool(d.get("read_only", False)),
        protocol=tuple(tuple(pair) for pair in d.get("protocol") or ()),  # e.g. an rbd node
    )


def live_handlers(c: ComputeDriver) -> dict[str, Handler]:
    """The handlers for ``agent_protocol.LIVE_ACTIONS`` (each command names its ``vm_id``)."""

    async def disks(vm_id: str) -> dict[str, Any]:
        return {"disks": [dataclasses.asdict(d) for d in await c.list_disks(vm_id)]}

    async def attach_disk(d: dict[str, Any]) -> dict[str, Any]:
        await c.attach_disk(d["vm_id"], _disk(d["disk"]))
        return await disks(d["vm_id"])

    async def detach_disk(d: dict[str, Any]) -> dict[str, Any]:
        await c.detach_disk(d["vm_id"], str(d["disk_id"]), timeout=float(d.get("timeout", 30)))
        return await disks(d["vm_id"])

    async def list_disks(d: dict[str, Any]) -> dict[str, Any]:
        return await disks(d["vm_id"])

    async def snapshot_disk(d: dict[str, Any]) -> dict[str, Any]:
        snap = await c.snapshot_disk(
            d["vm_id"], str(d["snapshot_id"]), disk_id=str(d.get("disk_id", "root"))
        )
        data = dataclasses.asdict(snap)
        data["created_at"] = snap.created_at.isoformat()
        return {"snapshot": data}

    async def migration_manifest(d: dict[str, Any]) -> dict[str, Any]:
        mode = d.get("mode", "shared")
        if mode not in ("shared", "block", "cold"):
            raise InvalidSpec(f"{mode!r} is not a migration mode")
        manifest = await c.migration_manifest(d["vm_id"], mode=mode)
        return {"manifest": dataclasses.asdict(manifest)}

    async def prepare_incoming(d: dict[str, Any]) -> dict[str, Any]:
        m = d["manifest"]
        manifest = MigrationManifest(str(m["vm_id"]), str(m["source_host"]), dict(m["data"]))
        return {"target": dataclasses.asdict(await c.prepare_incoming(manifest))}

    async def migrate_vm(d: dict[str, Any]) -> dict[str, Any]:
        t = d["target"]
        disks_uri = t.get("disks_uri")
        disks = None if disks_uri is None else str(disks_uri)
        target = IncomingMigration(str(t["vm_id"]), str(t["host"]), str(t["uri"]), disks)
        result = await c.migrate_vm(
            d["vm_id"],
            target,
            downtime_limit_ms=int(d.get("downtime_limit_ms", 300)),
            timeout=float(d.get("timeout", 600)),
        )
        return {"result": dataclasses.asdict(result)}

    async def finish_incoming(d: dict[str, Any]) -> dict[str, Any]:
        return {"status": status_to_dict(await c.finish_incoming(d["vm_id"]))}

    async def abort_incoming(d: dict[str, Any]) -> dict[str, Any]:
        await c.abort_incoming(d["vm_id"])
        return {}

    async def snapshot_root(d: dict[str, Any]) -> dict[str, Any]:
        await c.snapshot_root(d["vm_id"], str(d["snapshot_id"]))
        return {"snapshots": await c.list_root_snapshots(d["vm_id"])}

    async def rollback_root(d: dict[str, Any]) -> dict[str, Any]:
        await c.rollback_root(d["vm_id"], str(d["snapshot_id"]))
        return {}

    async def delete_root_snapshot(d: dict[str, Any]) -> dict[str, Any]:
        await c.delete_root_snapshot(d["vm_id"], str(d["snapshot_id"]))
        return {"snapshots": await c.list_root_snapshots(d["vm_id"])}

    handlers: dict[str, Handler] = {
        "attach_disk": attach_disk,
        "detach_disk": detach_disk,
        "list_disks": list_disks,
        "snapshot_disk": snapshot_disk,
        "migration_manifest": migration_manifest,
        "prepare_incoming": prepare_incoming,
        "migrate_vm": migrate_vm,
        "finish_incoming": finish_incoming,
        "abort_incoming": abort_incoming,
        "snapshot_root": snapshot_root,
        "rollback_root": rollback_root,
        "delete_root_snapshot": delete_root_snapshot,
    }
    return handlers
