"""Placement through the API: anti-affinity, capacity races, quotas, idempotency."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from altostack.db.models_compute import Host
from tests.compute.conftest import create_vm, image_id, wait_op
from tests.identity.helpers import make_tenant


async def test_hard_anti_affinity_and_explanation(client, owner):
    r = await client.post(
        "/v1/placement-groups",
        json={"name": "db", "policy": "anti-affinity", "mode": "hard"},
        headers=owner,
    )
    group = r.json()
    vms = [
        await create_vm(client, owner, f"db-{i}", placement_group_id=group["id"]) for i in range(3)
    ]
    assert len({vm["host_id"] for vm in vms}) == 3
    r = await client.post(
        "/v1/vms",
        json={
            "name": "db-4",
            "instance_type": "c1.small",
            "image_id": await image_id(client, owner),
            "placement_group_id": group["id"],
        },
        headers=owner,
    )
    assert r.status_code == 409 and r.json()["code"] == "InsufficientCapacity"
    assert "3 hosts" in r.json()["detail"] or "anti-affinity" in r.json()["detail"], r.json()
    r = await client.get(f"/v1/placement-groups/{group['id']}", headers=owner)
    assert sorted(r.json()["vm_ids"]) == sorted(vm["id"] for vm in vms)
    assert (
        await client.delete(f"/v1/placement-groups/{group['id']}", headers=owner)
    ).status_code == 409


async def test_group_names_are_unique_per_tenant(client, owner):
    body = {"name": "web", "policy": "anti-affinity", "mode": "soft"}
    first = await client.post("/v1/placement-groups", json=body, headers=owner)
    assert first.status_code == 201, first.text
    assert {k: first.json()[k] for k in ("name", "policy", "mode")} == body
    again = await client.post("/v1/placement-groups", json={**body, "mode": "hard"}, headers=owner)
    assert again.status_code == 409 and "'web' already exists" in again.json()["detail"]
    r = await client.get(f"/v1/placement-groups/{first.json()['id']}", headers=owner)
    assert r.status_code == 200 and r.json()["mode"] == "soft" and r.json()["vm_ids"] == []


async def test_parallel_creates_never_overbook(client, admin, owner, container):
    r = await client.post(
        "/v1/instance-types",
        json={
            "name": "big",
            "vcpus": 16,
            "memory_mib": 96 * 1024,
            "min_disk_gib": 10,
            "max_disk_gib": 100,
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    image = await image_id(client, owner)
    # Each sim host has 256 GiB and ram ratio 1.0: two 96 GiB VMs per host, six in all.
    responses = await asyncio.gather(
        *[
            client.post(
                "/v1/vms",
                json={"name": f"big-{i}", "instance_type": "big", "image_id": image},
                headers=owner,
            )
            for i in range(10)
        ]
    )
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 6 and codes.count(409) == 4, codes
    refusal = next(r.json() for r in responses if r.status_code == 409)
    assert "short of memory" in refusal["detail"], refusal
    async with container.db.uow(write=False) as uow:
        for host in await uow.session.scalars(select(Host)):
            assert host.memory_mib_used <= host.memory_mib, host.hostname
    for r in responses:
        if r.status_code == 202:
            assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"


async def test_vm_quota_under_concurrency(client, admin):
    tenant, headers = await make_tenant(client, admin, "quota-vms")
    await client.put(f"/v1/quotas/{tenant['id']}", json={"vms": 10}, headers=admin)
    image = await image_id(client, headers)
    responses = await asyncio.gather(
        *[
            client.post(
                "/v1/vms",
                json={"name": f"q{i}", "instance_type": "c1.small", "image_id": image},
                headers=headers,
            )
            for i in range(40)
        ]
    )
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 10 and codes.count(429) == 30, codes
    body = next(r.json() for r in responses if r.status_code == 429)
    assert body["code"] == "QuotaExceeded" and body["quota"] == "vms" and body["limit"] == 10


async def test_same_idempotency_key_creates_one_vm(client, owner):
    body = {"name": "once", "instance_type": "c1.small", "image_id": await image_id(client, owner)}
    headers = {**owner, "Idempotency-Key": "vm-create-once"}
    responses = await asyncio.gather(
        *[client.post("/v1/vms", json=body, headers=headers) for _ in range(50)]
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["vm"]["id"] for r in responses}) == 1
    listed = (await client.get("/v1/vms?name=once", headers=owner)).json()["items"]
    assert len(listed) == 1


async def test_validation_errors_name_the_field(client, owner):
    image = await image_id(client, owner)
    cases = [
        ({"name": "x", "instance_type": "nope", "image_id": image}, "instance_type"),
        ({"name": "x", "instance_type": "c1.small", "image_id": "img-nope"}, "image_id"),
        (
            {"name": "x", "instance_type": "c1.small", "image_id": image, "root_disk_gib": 5000},
            "root_disk_gib",
        ),
        ({"name": "bad name!", "instance_type": "c1.small", "image_id": image}, "name"),
        (
            {"name": "x", "instance_type": "c1.small", "image_id": image, "password": "weak"},
            "password",
        ),
        ({"name": "x", "instance_type": "c1.small", "image_id": image, "count": 11}, "count"),
    ]
    for body, field in cases:
        r = await client.post("/v1/vms", json=body, headers=owner)
        assert r.status_code in (400, 422), (field, r.text)
        assert r.json()["errors"][0]["field"] == field, r.json()


async def test_gpus_are_assigned_whole_and_once(client, admin, owner):
    cluster = (await client.get("/v1/clusters", headers=admin)).json()["items"][0]
    token = (
        await client.post(f"/v1/clusters/{cluster['id']}/actions/join-token", headers=admin)
    ).json()
    gpus = [{"pci_address": f"0000:8{i}:00.0", "model": "A100"} for i in range(2)]
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": token["join_token"],
            "hostname": "gpu-1",
            "arch": "x86_64",
            "cores": 32,
            "memory_mib": 262144,
            "disk_gib": 1000,
            "gpus": gpus,
        },
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/instance-types",
        json={"name": "g1.large", "vcpus": 8, "memory_mib": 16384, "gpus": 1},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    image = await image_id(client, owner)
    body = {"instance_type": "g1.large", "image_id": image}
    first = await client.post("/v1/vms", json={"name": "g-1", **body}, headers=owner)
    second = await client.post("/v1/vms", json={"name": "g-2", **body}, headers=owner)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    a, b = first.json()["vm"], second.json()["vm"]
    assert a["host_id"] == b["host_id"]
    assert len(a["gpu_addresses"]) == len(b["gpu_addresses"]) == 1
    assert a["gpu_addresses"] != b["gpu_addresses"]
    third = await client.post("/v1/vms", json={"name": "g-3", **body}, headers=owner)
    assert third.status_code == 409 and "GPU" in third.json()["detail"], third.json()
