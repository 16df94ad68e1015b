"""Hard placement groups under restore and under concurrent schedulers.

Restore takes the VM's hard-group guard back (anti-affinity slot, affinity host) or is
refused with a 409 naming what is in the way. Two schedulers with their own snapshots
(two API processes) racing the first members of a hard affinity group end on one host.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from altostack.db.models_compute import AntiAffinitySlot, PlacementGroup, Vm
from altostack.services.context import Principal, RequestContext
from altostack.services.placement import PlacementService
from altostack.services.vms import VmService
from tests.compute.conftest import act, create_vm, image_id, wait_op


async def _group(client, owner, name: str, policy: str) -> dict[str, Any]:
    r = await client.post(
        "/v1/placement-groups",
        json={"name": name, "policy": policy, "mode": "hard"},
        headers=owner,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _done(client, owner, r) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    op = await wait_op(client, owner, r.json()["operation"])
    assert op["state"] == "succeeded", op
    return op


async def _delete(client, owner, vm_id: str) -> None:
    await _done(client, owner, await client.delete(f"/v1/vms/{vm_id}", headers=owner))


async def test_restore_retakes_the_anti_affinity_slot(client, owner, container):
    group = await _group(client, owner, "db", "anti-affinity")
    a, b, c = [
        await create_vm(client, owner, f"db-{i}", placement_group_id=group["id"]) for i in range(3)
    ]
    await _delete(client, owner, a["id"])
    # The slot went with the delete: a new member may take a's host (the only free one).
    d = await create_vm(client, owner, "db-3", placement_group_id=group["id"])
    assert d["host_id"] == a["host_id"]

    r = await act(client, owner, a["id"], "restore")
    assert r.status_code == 409, r.text
    problem = r.json()
    assert problem["conflicting_vm_id"] == d["id"], problem
    assert problem["host_id"] == a["host_id"] and problem["placement_group_id"] == group["id"]
    assert d["id"] in problem["detail"] and "anti-affinity" in problem["detail"]
    # Nothing was taken by the refused restore: still in the bin, quota untouched.
    assert (await client.get(f"/v1/vms/{a['id']}", headers=owner)).json()["state"] == "deleted"

    await _delete(client, owner, d["id"])
    await _done(client, owner, await act(client, owner, a["id"], "restore"))
    async with container.db.uow(write=False) as uow:
        slots = {
            s.host_id: s.vm_id
            for s in await uow.session.scalars(
                select(AntiAffinitySlot).where(AntiAffinitySlot.group_id == group["id"])
            )
        }
    assert slots == {a["host_id"]: a["id"], b["host_id"]: b["id"], c["host_id"]: c["id"]}
    # Every host holds a member again, so a fourth one has nowhere to go.
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
    assert r.status_code == 409 and r.json()["code"] == "InsufficientCapacity", r.text


async def _anchor(container, group_id: str) -> tuple[str | None, int]:
    async with container.db.uow(write=False) as uow:
        group = await uow.session.get(PlacementGroup, group_id)
        assert group is not None
        return group.host_id, group.members


async def test_restore_into_a_hard_affinity_group_that_moved(client, admin, owner, container):
    group = await _group(client, owner, "pair", "affinity")
    a = await create_vm(client, owner, "pair-a", placement_group_id=group["id"])
    b = await create_vm(client, owner, "pair-b", placement_group_id=group["id"])
    assert a["host_id"] == b["host_id"]
    assert await _anchor(container, group["id"]) == (a["host_id"], 2)
    await _delete(client, owner, a["id"])
    await _delete(client, owner, b["id"])
    assert await _anchor(container, group["id"]) == (None, 0)

    # The emptied group starts again elsewhere (a's host is disabled meanwhile).
    r = await client.post(f"/v1/hosts/{a['host_id']}/actions/disable", headers=admin)
    assert r.status_code == 200, r.text
    c = await create_vm(client, owner, "pair-c", placement_group_id=group["id"])
    assert c["host_id"] != a["host_id"]
    r = await client.post(f"/v1/hosts/{a['host_id']}/actions/enable", headers=admin)
    assert r.status_code == 200, r.text

    r = await act(client, owner, a["id"], "restore")
    assert r.status_code == 409, r.text
    assert r.json()["group_host_id"] == c["host_id"], r.json()
    assert "affinity" in r.json()["detail"]

    await _delete(client, owner, c["id"])
    await _done(client, owner, await act(client, owner, a["id"], "restore"))
    await _done(client, owner, await act(client, owner, b["id"], "restore"))
    assert await _anchor(container, group["id"]) == (a["host_id"], 2)


def _second_scheduler(container, tenant_id: str) -> tuple[VmService, RequestContext]:
    """Another API process: its own placement service and snapshot, the same database."""
    vms = VmService(
        container.db,
        container.operations,
        container.quotas,
        PlacementService(container.db, refresh_seconds=3600),
        recycle_seconds=container.settings.recycle_seconds,
    )
    principal = Principal(
        user_id="user-racer",
        username="racer",
        tenant_id=tenant_id,
        tenant_name="compute",
        role="owner",
        is_platform_admin=False,
        auth_method="token",
        permissions=("*:*",),
    )
    return vms, RequestContext(principal)


async def test_first_members_of_hard_affinity_groups_race_onto_one_host(client, owner, container):
    tenant_id = (await client.get("/v1/quotas", headers=owner)).json()["tenant_id"]
    image = await image_id(client, owner)
    left, ctx = _second_scheduler(container, tenant_id)
    right, _ = _second_scheduler(container, tenant_id)
    groups = [(await _group(client, owner, f"g{i}", "affinity"))["id"] for i in range(6)]
    # Both snapshots are taken while every group is empty, and never refreshed by time.
    await left.placement.refresh()
    await right.placement.refresh()

    def req(name: str, group_id: str, count: int = 1) -> dict[str, Any]:
        return {
            "name": name,
            "instance_type": "c1.small",
            "image_id": image,
            "placement_group_id": group_id,
            "count": count,
        }

    # One VM from each side per group; on the last group a batch of two races a single.
    results = await asyncio.gather(
        *[
            side.create(ctx, req(f"{side_name}{i}", g, 2 if i == 5 and side is right else 1))
            for i, g in enumerate(groups)
            for side_name, side in (("l", left), ("r", right))
        ]
    )
    assert sum(len(r) for r in results) == 13
    async with container.db.uow(write=False) as uow:
        rows = (await uow.session.execute(select(Vm.placement_group_id, Vm.host_id, Vm.id))).all()
    hosts: dict[str, set[str]] = {}
    for group_id, host_id, _ in rows:
        hosts.setdefault(group_id, set()).add(host_id)
    for g in groups:
        assert len(hosts[g]) == 1, (g, hosts[g])
        assert await _anchor(container, g) == (next(iter(hosts[g])), 3 if g == groups[5] else 2)
    # The losers re-planned; every create still runs to the end.
    for created in results:
        for _vm, op in created:
            assert (await wait_op(client, owner, {"id": op.id}))["state"] == "succeeded"
