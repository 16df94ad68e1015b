"""``alto disk``, ``alto snapshot``, ``alto storage-pool`` against a fake API."""

from __future__ import annotations

from typing import Any

from tests.unit.test_cli_compute import (  # noqa: F401  (fixtures)
    FakeApi,
    alto,
    api,
    isolated,
    ok,
    op,
    out_json,
    page,
)

DISK = {"id": "disk-1", "name": "data", "size_gib": 10, "storage_class": "ssd",
        "state": "available", "vm_id": None, "host_id": "host-1"}  # fmt: skip
SNAP = {"id": "snap-1", "name": "s", "disk_id": "disk-1", "size_gib": 10, "state": "available"}


def test_disk_create_waits_and_actions_send_what_was_asked(api: FakeApi, alto: Any) -> None:  # noqa: F811 (fixtures)
    accepted = {"operation": op(state="pending", progress=0), "disk": {**DISK, "state": "creating"}}
    api.on("POST /v1/disks", ok(accepted, 202, location="/v1/disks/disk-1"))
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/disks/disk-1", ok(DISK))
    api.on("GET /v1/disks", page(DISK))
    for verb in ("attach", "detach", "resize", "clone", "restore"):
        api.on(f"POST /v1/disks/disk-1/actions/{verb}", ok({"operation": op(), "disk": DISK}, 202))
    result = alto(
        "-o", "json", "disk", "create", "data", "--size", "10", "--class", "ssd", "--wait"
    )
    assert out_json(result)["state"] == "available"
    assert api.bodies("POST /v1/disks") == [
        {"name": "data", "size_gib": 10, "storage_class": "ssd"}
    ]
    alto("disk", "attach", "disk-1", "--vm", "vm-1", "--no-wait")
    alto("disk", "resize", "disk-1", "--size", "20", "--no-wait")
    alto("disk", "clone", "disk-1", "--name", "copy", "--no-wait")
    assert api.bodies("POST /v1/disks/disk-1/actions/attach") == [{"vm_id": "vm-1"}]
    assert api.bodies("POST /v1/disks/disk-1/actions/resize") == [{"size_gib": 20}]
    assert api.bodies("POST /v1/disks/disk-1/actions/clone") == [{"name": "copy"}]
    assert "disk-1" in alto("disk", "list", "--vm", "vm-1").stdout
    assert api.to("GET /v1/disks")[-1].url.params["vm_id"] == "vm-1"


def test_snapshot_create_list_and_rollback(api: FakeApi, alto: Any) -> None:  # noqa: F811 (fixtures)
    api.on("POST /v1/snapshots", ok({"operation": op(), "snapshot": SNAP}, 202))
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/snapshots/snap-1", ok(SNAP))
    api.on("GET /v1/snapshots", page(SNAP))
    api.on(
        "POST /v1/snapshots/snap-1/actions/rollback", ok({"operation": op(), "snapshot": SNAP}, 202)
    )
    alto("snapshot", "create", "s", "--disk", "disk-1")
    assert api.bodies("POST /v1/snapshots") == [{"disk_id": "disk-1", "name": "s"}]
    assert "snap-1" in alto("snapshot", "list", "--disk", "disk-1").stdout
    alto("snapshot", "rollback", "snap-1", input="n\n", code=1)
    assert not api.to("POST /v1/snapshots/snap-1/actions/rollback")
    alto("snapshot", "rollback", "snap-1", "--yes", "--no-wait")
    assert len(api.to("POST /v1/snapshots/snap-1/actions/rollback")) == 1
