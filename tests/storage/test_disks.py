"""Disks through the API on sim hosts: life cycle, attach rules, resize, recycle bin,
quotas, tenant isolation and every state's refusals (409 naming the state)."""

from __future__ import annotations

import asyncio
import dataclasses

from sqlalchemy import update

from altostack.db.models_storage import Disk
from tests.compute.conftest import act, create_vm, image_id, wait_op
from tests.identity.helpers import make_tenant
from tests.storage.conftest import create_disk, disk_act, snapshot, storage_of

GIB = 1024**3


async def test_disk_life_cycle_attach_resize_recycle_bin(client, owner, container) -> None:
    vms = [await create_vm(client, owner, name=f"vm{i}") for i in range(3)]
    disk = await create_disk(client, owner, "data", size_gib=10, storage_class="ssd")
    assert (disk["state"], disk["size_gib"], disk["storage_class"]) == ("available", 10, "ssd")
    pool = storage_of(container, disk["host_id"])
    assert (await pool.get_volume(disk["id"])).size_gib == 10
    # Placement weighs load, so three VMs need not cover both hosts: add until they do.
    while {v["host_id"] == disk["host_id"] for v in vms} != {True, False}:
        assert len(vms) < 12, "placement never used both hosts"
        vms.append(await create_vm(client, owner, name=f"vm{len(vms)}"))
    here = next(v for v in vms if v["host_id"] == disk["host_id"])
    elsewhere = next(v for v in vms if v["host_id"] != disk["host_id"])

    # A per-host pool: the disk attaches only to VMs of its host, said clearly.
    r = await disk_act(client, owner, disk["id"], "attach", vm_id=elsewhere["id"])
    assert r.status_code == 409, r.text
    assert r.json()["disk_host_id"] == disk["host_id"] and "attaches only" in r.json()["detail"]

    # Hot attach on the running VM.
    r = await disk_act(client, owner, disk["id"], "attach", vm_id=here["id"])
    assert r.status_code == 202 and r.json()["disk"]["state"] == "attaching"
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert (got["state"], got["vm_id"]) == ("in-use", here["id"])
    hypervisor_disks = await agent_of_vm_disks(container, here)
    assert [d.id for d in hypervisor_disks] == [disk["id"]]
    listed = (await client.get(f"/v1/disks?vm_id={here['id']}", headers=owner)).json()["items"]
    assert [d["id"] for d in listed] == [disk["id"]]

    # In use: no second attach, no delete; grows online.
    r = await disk_act(client, owner, disk["id"], "attach", vm_id=here["id"])
    assert r.status_code == 409 and r.json()["current_state"] == "in-use"
    r = await client.delete(f"/v1/disks/{disk['id']}", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "in-use"
    r = await disk_act(client, owner, disk["id"], "resize", size_gib=5)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "size_gib"
    r = await disk_act(client, owner, disk["id"], "resize", size_gib=20)
    assert r.status_code == 202, r.text
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert (got["state"], got["size_gib"]) == ("in-use", 20)
    assert (await pool.get_volume(disk["id"])).size_gib == 20

    # Detach, then to the recycle bin, restore, and purge for good.
    r = await disk_act(client, owner, disk["id"], "detach")
    assert r.status_code == 202
    assert await agent_of_vm_disks(container, here) == []
    r = await client.delete(f"/v1/disks/{disk['id']}", headers=owner)
    assert r.status_code == 202
    await wait_op(client, owner, r.json()["operation"])
    assert (await client.get("/v1/disks", headers=owner)).json()["items"] == []
    bin_ = (await client.get("/v1/recycle-bin", headers=owner)).json()["items"]
    assert [i["id"] for i in bin_] == [disk["id"]] and bin_[0]["purge_after"]
    quotas = (await client.get("/v1/quotas", headers=owner)).json()["quotas"]
    assert (quotas["disks"]["usage"], quotas["disk_gib"]["usage"]) == (0, 0)
    r = await disk_act(client, owner, disk["id"], "restore")
    assert r.status_code == 202
    got = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert got["state"] == "available" and got["purge_after"] is None
    quotas = (await client.get("/v1/quotas", headers=owner)).json()["quotas"]
    assert (quotas["disks"]["usage"], quotas["disk_gib"]["usage"]) == (1, 20)
    r = await client.delete(f"/v1/recycle-bin/{disk['id']}", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "available"
    r = await client.delete(f"/v1/disks/{disk['id']}", headers=owner)
    await wait_op(client, owner, r.json()["operation"])
    allocated = (await pool.pool_info()).provisioned_bytes
    r = await client.delete(f"/v1/recycle-bin/{disk['id']}", headers=owner)
    assert r.status_code == 202
    assert (await wait_op(client, owner, r.json()))["state"] == "succeeded"
    assert (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).status_code == 404
    assert await pool.get_volume(disk["id"]) is None
    assert (await pool.pool_info()).provisioned_bytes == allocated - 20 * GIB
    pools = (await client.get("/v1/storage-pools", headers=await _admin(client))).json()
    assert pools["items"][0]["provisioned_gib"] == 0


async def agent_of_vm_disks(container, vm):
    from tests.storage.conftest import agent_of

    return await agent_of(container, vm["host_id"]).compute.list_disks(vm["id"])


async def _admin(client):
    from tests.conftest import ADMIN_PASSWORD, login

    return await login(client, "admin", ADMIN_PASSWORD)


async def test_stopped_vm_cold_attach_and_sources(client, owner, container) -> None:
    vm = await create_vm(client, owner)
    assert (await act(client, owner, vm["id"], "stop")).status_code == 202
    for _ in range(50):
        vm = (await client.get(f"/v1/vms/{vm['id']}", headers=owner)).json()
        if vm["state"] == "stopped":
            break
    from_image = await create_disk(client, owner, "img", image_id=await image_id(client, owner))
    assert (from_image["source_type"], from_image["state"]) == ("image", "available")
    pool = storage_of(container, from_image["host_id"])
    assert (await pool.read(from_image["id"], 0, 32)) != bytes(32)  # the image's data
    clone = await create_disk(client, owner, "copy", source_disk_id=from_image["id"], size_gib=5)
    assert (clone["host_id"], clone["source_id"]) == (from_image["host_id"], from_image["id"])
    assert await pool.read(clone["id"], 0, 4096) == await pool.read(from_image["id"], 0, 4096)
    r = await disk_act(client, owner, from_image["id"], "clone", name="copy2")
    assert r.status_code == 202 and r.json()["disk"]["source_id"] == from_image["id"]
    r = await client.post(
        "/v1/disks", json={"name": "small", "source_disk_id": clone["id"], "size_gib": 1},
        headers=owner,
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "size_gib"
    r = await client.post("/v1/disks", json={"name": "x"}, headers=owner)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "size_gib"
    r = await client.post(
        "/v1/disks", json={"name": "x", "size_gib": 1, "storage_class": "gold"}, headers=owner
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "storage_class"
    if vm["host_id"] == clone["host_id"]:  # cold attach: at the next start
        assert (
            await disk_act(client, owner, clone["id"], "attach", vm_id=vm["id"])
        ).status_code == 202
        got = (await client.get(f"/v1/disks/{clone['id']}", headers=owner)).json()
        assert got["state"] == "in-use"


async def test_disk_quotas(client, admin, owner) -> None:
    tenant_id = (await client.get("/v1/quotas", headers=owner)).json()["tenant_id"]
    await client.put(f"/v1/quotas/{tenant_id}", json={"disks": 3, "disk_gib": 15}, headers=admin)
    await create_disk(client, owner, "a", size_gib=5)
    await create_disk(client, owner, "b", size_gib=5)
    r = await client.post("/v1/disks", json={"name": "c", "size_gib": 10}, headers=owner)
    assert r.status_code == 429 and "disk_gib" in r.text
    await create_disk(client, owner, "c", size_gib=1)
    r = await client.post("/v1/disks", json={"name": "d", "size_gib": 1}, headers=owner)
    assert r.status_code == 429 and "disks" in r.text
    disks = (await client.get("/v1/disks", headers=owner)).json()["items"]
    assert {d["name"] for d in disks} == {"a", "b", "c"}  # nothing left behind
    r = await disk_act(client, owner, disks[0]["id"], "resize", size_gib=20)
    assert r.status_code == 429 and "disk_gib" in r.text


async def test_tenant_isolation(client, admin, owner) -> None:
    disk = await create_disk(client, owner, "mine")
    snap = await snapshot(client, owner, disk["id"])
    _, other = await make_tenant(client, admin, "other")
    await client.put(
        f"/v1/quotas/{(await client.get('/v1/quotas', headers=other)).json()['tenant_id']}",
        json={"vms": -1, "vcpus": -1, "memory_mib": -1},
        headers=admin,
    )
    assert (await client.get(f"/v1/disks/{disk['id']}", headers=other)).status_code == 404
    assert (await client.get(f"/v1/snapshots/{snap['id']}", headers=other)).status_code == 404
    assert (await client.get("/v1/disks", headers=other)).json()["items"] == []
    assert (await client.get("/v1/snapshots", headers=other)).json()["items"] == []
    for verb, body in (("resize", {"size_gib": 50}), ("detach", {}), ("clone", {"name": "x"})):
        r = await disk_act(client, other, disk["id"], verb, **body)
        assert r.status_code == 404, (verb, r.text)
    assert (await client.delete(f"/v1/disks/{disk['id']}", headers=other)).status_code == 404
    r = await client.post("/v1/snapshots", json={"disk_id": disk["id"], "name": "x"}, headers=other)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "disk_id"
    r = await client.post("/v1/disks", json={"name": "x", "snapshot_id": snap["id"]}, headers=other)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "snapshot_id"
    r = await client.post(f"/v1/snapshots/{snap['id']}/actions/rollback", headers=other)
    assert r.status_code == 404
    their_vm = await create_vm(client, other)
    r = await disk_act(client, owner, disk["id"], "attach", vm_id=their_vm["id"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "vm_id"
    assert (await client.get("/v1/storage-pools", headers=owner)).status_code == 403
    assert (await client.delete(f"/v1/recycle-bin/{disk['id']}", headers=other)).status_code == 404


VERBS = {
    "attach": {"vm_id": "vm-none"},
    "detach": {},
    "resize": {"size_gib": 99},
    "restore": {},
    "clone": {"name": "c"},
}
STATES = [
    "creating", "attaching", "in-use", "detaching", "resizing", "restoring", "deleting",
    "deleted", "purging", "error", "available",
]  # fmt: skip
ALLOWED = {
    "attach": {"available"},
    "detach": {"in-use"},
    "resize": {"available", "in-use"},
    "restore": {"deleted"},
    "clone": {"available", "in-use"},
    "delete": {"available", "error"},
    "snapshot": {"available", "in-use"},
}


async def test_every_state_refuses_what_it_cannot_do(client, owner, container) -> None:
    disk = await create_disk(client, owner, "st", size_gib=2)
    for state in STATES:
        async with container.db.uow() as uow:
            await uow.session.execute(
                update(Disk).where(Disk.id == disk["id"]).values(state=state, vm_id=None)
            )
            await uow.commit()
        for verb in [*VERBS, "delete", "snapshot"]:
            if state in ALLOWED[verb]:
                continue
            if verb == "delete":
                r = await client.delete(f"/v1/disks/{disk['id']}", headers=owner)
            elif verb == "snapshot":
                r = await client.post(
                    "/v1/snapshots", json={"disk_id": disk["id"], "name": "x"}, headers=owner
                )
            else:
                r = await disk_act(client, owner, disk["id"], verb, wait=False, **VERBS[verb])
            assert r.status_code == 409, (state, verb, r.text)
            assert r.json()["current_state"] == state, (state, verb)
            assert state in r.json()["detail"]


async def test_storage_pools_admin_reports_and_health(client, admin, owner, pool, container):
    assert pool["shared"] is False and pool["health"] == "unknown"
    again = {**{k: pool[k] for k in ("backend", "cluster_ids")}, "name": "other"}
    r = await client.post(
        "/v1/storage-pools", json={**again, "storage_classes": ["ssd"]}, headers=admin
    )
    assert r.status_code == 409 and "ssd" in r.json()["detail"]
    r = await client.post("/v1/storage-pools", json={**again, "backend": "nfs"}, headers=admin)
    assert r.status_code in (400, 422) and "backend" in r.text
    assert (await client.get(f"/v1/storage-pools/{pool['id']}", headers=owner)).status_code == 403

    for _ in range(50):
        await asyncio.sleep(0.1)
        got = (await client.get(f"/v1/storage-pools/{pool['id']}", headers=admin)).json()
        if len(got["hosts"]) == 3:
            break
    assert got["health"] == "ok" and len(got["hosts"]) == 3 and got["capacity_bytes"] > 0

    # One host's pool loses redundancy: the pool shows it, in the backend's words.
    storage = container.agents[0].disks.storage
    healthy = storage.pool_info

    async def degraded():
        info = await healthy()
        return dataclasses.replace(info, health="degraded", health_detail="1 osds down")

    storage.pool_info = degraded
    for _ in range(50):  # the next heartbeat carries it
        await asyncio.sleep(0.1)
        got = (await client.get(f"/v1/storage-pools/{pool['id']}", headers=admin)).json()
        if got["health"] != "ok":
            break
    assert (got["health"], got["health_detail"]) == ("degraded", "1 osds down")

    # Thin provisioning: capacity x allocation ratio bounds what disks may claim.
    r = await client.patch(
        f"/v1/storage-pools/{pool['id']}", json={"allocation_ratio": 1.0}, headers=admin
    )
    assert r.status_code == 200 and r.json()["allocation_ratio"] == 1.0
    too_big = got["capacity_bytes"] // 1024**3 + 1
    tenant_id = (await client.get("/v1/quotas", headers=owner)).json()["tenant_id"]
    await client.put(f"/v1/quotas/{tenant_id}", json={"disk_gib": -1}, headers=admin)
    r = await client.post(
        "/v1/disks", json={"name": "huge", "size_gib": min(too_big, 16384)}, headers=owner
    )
    assert r.status_code in (400, 409), r.text
    disk = await create_disk(client, owner, "in-pool", size_gib=1)
    r = await client.delete(f"/v1/storage-pools/{pool['id']}", headers=admin)
    assert r.status_code == 409 and disk["pool_id"] == pool["id"]
