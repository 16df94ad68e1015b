"""Snapshots through the API on sim pools: data checked by content (write, snapshot,
overwrite, roll back, compare), the per-disk limit, rollback refusals, disks from
snapshots, and twenty concurrent snapshot/clone requests on one disk."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from sqlalchemy import update

from altostack.db.models_storage import Disk
from tests.compute.conftest import act, create_vm, wait_op
from tests.storage.conftest import create_disk, disk_act, snapshot, storage_of


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_snapshot_overwrite_rollback_and_disk_from_snapshot(client, owner, container):
    disk = await create_disk(client, owner, "db", size_gib=4)
    pool = storage_of(container, disk["host_id"])
    original = bytes(range(256)) * 256
    await pool.write(disk["id"], 1 << 20, original)
    snap = await snapshot(client, owner, disk["id"], "before")
    got = (await client.get(f"/v1/snapshots/{snap['id']}", headers=owner)).json()
    assert (got["state"], got["size_gib"], got["disk_id"]) == ("available", 4, disk["id"])
    await pool.write(disk["id"], 1 << 20, b"\xff" * len(original))
    assert await disk_act(client, owner, disk["id"], "resize", size_gib=8)

    # A disk from the snapshot has the data as it was, and lives beside its source.
    copy = await create_disk(client, owner, "db-copy", snapshot_id=snap["id"])
    assert (copy["size_gib"], copy["host_id"]) == (4, disk["host_id"])
    assert _digest(await pool.read(copy["id"], 1 << 20, len(original))) == _digest(original)

    # Attached to a running VM: rollback is refused naming the VM's state.
    vm = await _vm_on(client, owner, disk["host_id"])
    await disk_act(client, owner, disk["id"], "attach", vm_id=vm["id"])
    r = await client.post(f"/v1/snapshots/{snap['id']}/actions/rollback", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "running"
    assert vm["id"] in r.json()["detail"]
    # A live snapshot of the attached disk is fine (crash-consistent).
    live = await snapshot(client, owner, disk["id"], "live")
    await disk_act(client, owner, disk["id"], "detach")

    r = await client.post(f"/v1/snapshots/{snap['id']}/actions/rollback", headers=owner)
    assert r.status_code == 202 and r.json()["snapshot"]["id"] == snap["id"]
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    assert _digest(await pool.read(disk["id"], 1 << 20, len(original))) == _digest(original)
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert (got["state"], got["size_gib"]) == ("available", 4)  # the size came back too
    quotas = (await client.get("/v1/quotas", headers=owner)).json()["quotas"]
    assert quotas["disk_gib"]["usage"] == 8 and quotas["snapshots"]["usage"] == 2

    listed = (await client.get(f"/v1/snapshots?disk_id={disk['id']}", headers=owner)).json()
    assert {s["id"] for s in listed["items"]} == {snap["id"], live["id"]}
    r = await client.delete(f"/v1/snapshots/{live['id']}", headers=owner)
    assert r.status_code == 202
    await wait_op(client, owner, r.json()["operation"])
    assert {s.id for s in await pool.list_snapshots(disk["id"])} == {snap["id"]}
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert got["snapshot_count"] == 1


async def _vm_on(client, owner, host_id):
    for i in range(6):
        vm = await create_vm(client, owner, name=f"v{i}")
        if vm["host_id"] == host_id:
            return vm
    raise AssertionError("no VM landed on the disk's host")


async def test_per_disk_limit_and_stopped_vm_rollback(client, owner, container) -> None:
    disk = await create_disk(client, owner, "lim", size_gib=1)
    for i in range(10):
        await snapshot(client, owner, disk["id"], f"s{i}")
    r = await client.post("/v1/snapshots", json={"disk_id": disk["id"], "name": "x"}, headers=owner)
    assert r.status_code == 409 and r.json()["limit"] == 10 and "limit" in r.json()["detail"]
    vm = await _vm_on(client, owner, disk["host_id"])
    await disk_act(client, owner, disk["id"], "attach", vm_id=vm["id"])
    await wait_op(client, owner, (await act(client, owner, vm["id"], "stop")).json()["operation"])
    snaps = (await client.get(f"/v1/snapshots?disk_id={disk['id']}", headers=owner)).json()
    r = await client.post(
        f"/v1/snapshots/{snaps['items'][0]['id']}/actions/rollback", headers=owner
    )
    assert r.status_code == 202  # attached to a stopped VM: fine
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert got["state"] == "in-use"
    async with container.db.uow() as uow:  # a rollback under way holds the VM's start
        await uow.session.execute(
            update(Disk).where(Disk.id == disk["id"]).values(state="restoring")
        )
        await uow.commit()
    r = await act(client, owner, vm["id"], "start")
    assert r.status_code == 409 and r.json()["disk_id"] == disk["id"]


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_twenty_parallel_snapshots_and_clones_leave_a_consistent_chain(
    client, owner, container
) -> None:
    disk = await create_disk(client, owner, "hot", size_gib=2)
    pool = storage_of(container, disk["host_id"])
    await pool.write(disk["id"], 0, b"gen-0".ljust(4096, b"\0"))

    async def snap(i: int):
        body = {"disk_id": disk["id"], "name": f"s{i}"}
        return await client.post("/v1/snapshots", json=body, headers=owner)

    async def clone(i: int):
        body = {"name": f"c{i}"}
        return await client.post(f"/v1/disks/{disk['id']}/actions/clone", json=body, headers=owner)

    replies = await asyncio.gather(*[snap(i) for i in range(14)], *[clone(i) for i in range(6)])
    codes = sorted(r.status_code for r in replies)
    assert codes.count(202) == 16 and codes.count(409) == 4, codes  # 10 snapshots + 6 clones
    ops = [r.json()["operation"] for r in replies if r.status_code == 202]
    finished = await asyncio.gather(*[wait_op(client, owner, op) for op in ops])
    assert {o["state"] for o in finished} == {"succeeded"}

    snaps = (await client.get(f"/v1/snapshots?disk_id={disk['id']}", headers=owner)).json()
    assert len(snaps["items"]) == 10 and {s["state"] for s in snaps["items"]} == {"available"}
    assert {s.id for s in await pool.list_snapshots(disk["id"])} == {
        s["id"] for s in snaps["items"]
    }
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert (got["snapshot_count"], got["state"]) == (10, "available")
    clones = [
        d for d in (await client.get("/v1/disks", headers=owner)).json()["items"]
        if d["source_id"] == disk["id"]
    ]  # fmt: skip
    assert len(clones) == 6 and {c["state"] for c in clones} == {"available"}
    for c in clones:
        assert (await pool.read(c["id"], 0, 5)) == b"gen-0"
    quotas = (await client.get("/v1/quotas", headers=owner)).json()["quotas"]
    assert (quotas["snapshots"]["usage"], quotas["disks"]["usage"]) == (10, 7)
