"""Moving VMs between hosts through the API (sim cloud: three hosts, per-host sim pools).

Live when running (a host-local root disk needs ``block_migration``), cold when stopped
(local data disks go along, byte for byte); claims follow the VM; a failure leaves the VM
where it was, as it was; only platform administrators may move VMs.
"""

from __future__ import annotations

from typing import Any

import httpx

from altostack.bootstrap import Container
from tests.compute.conftest import act, create_vm, wait_op
from tests.storage.conftest import agent_of, create_disk, disk_act, storage_of


async def _migrate(
    client: httpx.AsyncClient, admin: dict[str, str], vm_id: str, **body: Any
) -> tuple[httpx.Response, dict[str, Any] | None]:
    r = await client.post(f"/v1/vms/{vm_id}/actions/migrate", json=body, headers=admin)
    if r.status_code != 202:
        return r, None
    assert r.json()["vm"]["state"] == "migrating"
    return r, await wait_op(client, admin, r.json()["operation"])


async def _hosts(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    items = (await client.get("/v1/hosts", headers=admin)).json()["items"]
    return {h["id"]: h for h in items}


async def _stopped_vm(client: httpx.AsyncClient, owner: dict[str, str]) -> dict[str, Any]:
    vm = await create_vm(client, owner)
    r = await act(client, owner, vm["id"], "stop")
    await wait_op(client, owner, r.json()["operation"])
    return vm


async def _vm(client: httpx.AsyncClient, headers: dict[str, str], vm_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/vms/{vm_id}", headers=headers)).json())


async def test_live_migration_needs_block_migration_and_moves_the_running_guest(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    vm = await create_vm(client, owner, password="Guest-Pass-1")
    source = vm["host_id"]
    r = await act(client, owner, vm["id"], "migrate", block_migration=True)
    assert r.status_code == 403, r.text  # tenants cannot move VMs
    r, _ = await _migrate(client, admin, vm["id"])
    assert r.status_code == 409, r.text
    assert "block_migration=true" in r.json()["detail"]
    assert r.json()["local_disks"] == ["root"]
    used = {h: v["usage"]["vcpus"] for h, v in (await _hosts(client, admin)).items()}

    r, op = await _migrate(client, admin, vm["id"], block_migration=True)
    assert op is not None and op["state"] == "succeeded", op
    moved = await _vm(client, owner, vm["id"])
    assert moved["state"] == "running" and moved["host_id"] != source
    assert op["result"]["source_host_id"] == source
    assert op["result"]["host_id"] == moved["host_id"]
    hypervisors = container.sim_hypervisors.values()
    holders = [h for h in hypervisors if h.find(vm["id"])]
    assert len(holders) == 1  # the guest lives on exactly one host
    guest = holders[0].guest(vm["id"])
    assert guest.boots == 1 and guest.passwords["root"] == "Guest-Pass-1"  # not rebooted
    after = {h: v["usage"]["vcpus"] for h, v in (await _hosts(client, admin)).items()}
    assert after[source] == used[source] - vm["vcpus"]
    assert after[moved["host_id"]] == used[moved["host_id"]] + vm["vcpus"]
    # The VM works on its new host as before.
    r = await act(client, owner, vm["id"], "reboot")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"


async def test_cold_migration_to_a_named_host_and_bad_targets(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    vm = await _stopped_vm(client, owner)
    hosts = await _hosts(client, admin)
    other = next(h for h in sorted(hosts) if h != vm["host_id"])
    r, _ = await _migrate(client, admin, vm["id"], host_id=vm["host_id"])
    assert r.status_code == 400 and "already runs" in r.text
    r, _ = await _migrate(client, admin, vm["id"], host_id="host-nope")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "host_id"

    r, op = await _migrate(client, admin, vm["id"], host_id=other)
    assert op is not None and op["state"] == "succeeded", op
    moved = await _vm(client, owner, vm["id"])
    assert (moved["state"], moved["host_id"]) == ("stopped", other)
    assert moved["observed_generation"] == moved["generation"]
    r = await act(client, owner, vm["id"], "start")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    assert (await _vm(client, owner, vm["id"]))["state"] == "running"
    for agent in container.agents:  # the sim hosts' private transfer directories are gone
        assert not agent.transfers.dir.exists()


async def test_a_failed_migration_leaves_the_vm_where_it_was(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    vm = await _stopped_vm(client, owner)
    hosts = await _hosts(client, admin)
    other = next(h for h in sorted(hosts) if h != vm["host_id"])
    agent_of(container, other).compute.faults.inject(  # type: ignore[attr-defined]
        "receive_stopped", resource_id=vm["id"], times=None
    )
    r, op = await _migrate(client, admin, vm["id"], host_id=other)
    assert op is not None and op["state"] == "failed", op
    assert "stays on host" in op["error"]["message"]
    after = await _vm(client, owner, vm["id"])
    assert (after["state"], after["host_id"]) == ("stopped", vm["host_id"])
    assert (await _hosts(client, admin))[other]["usage"]["vcpus"] == hosts[other]["usage"]["vcpus"]
    assert not container.sim_hypervisors[hosts[other]["hostname"]].find(vm["id"])
    agent_of(container, other).compute.faults.clear()  # type: ignore[attr-defined]
    r = await act(client, owner, vm["id"], "start")  # still whole where it was
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"


async def test_hard_anti_affinity_holds_during_and_after_a_move(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str]
) -> None:
    r = await client.post(
        "/v1/placement-groups",
        json={"name": "spread", "policy": "anti-affinity", "mode": "hard"},
        headers=owner,
    )
    group = r.json()["id"]
    a = await create_vm(client, owner, "a", placement_group_id=group)
    b = await create_vm(client, owner, "b", placement_group_id=group)
    r, _ = await _migrate(client, admin, a["id"], host_id=b["host_id"], block_migration=True)
    assert r.status_code == 409, r.text  # b's host holds a member of the group
    r, op = await _migrate(client, admin, a["id"], block_migration=True)
    assert op is not None and op["state"] == "succeeded", (r.text, op)
    moved = await _vm(client, owner, a["id"])
    assert moved["host_id"] not in (a["host_id"], b["host_id"])  # the only place left
    # a's old host is free for the group again.
    c = await create_vm(client, owner, "c", placement_group_id=group)
    assert c["host_id"] == a["host_id"]


async def test_local_data_disks_refuse_live_and_move_cold_with_their_bytes(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    disk = await create_disk(client, owner, "data", size_gib=2)
    for i in range(12):  # a VM on the disk's host (a per-host pool)
        vm = await create_vm(client, owner, f"vm-{i}")
        if vm["host_id"] == disk["host_id"]:
            break
    assert vm["host_id"] == disk["host_id"]
    r = await disk_act(client, owner, disk["id"], "attach", vm_id=vm["id"])
    assert r.status_code == 202, r.text
    source = vm["host_id"]
    payload = b"alto-migration-" * 1000
    await storage_of(container, source).write(disk["id"], 3 << 20, payload)

    r, _ = await _migrate(client, admin, vm["id"], block_migration=True)
    assert r.status_code == 409 and r.json()["local_disks"] == [disk["id"]], r.text
    r = await act(client, owner, vm["id"], "stop")
    await wait_op(client, owner, r.json()["operation"])
    r, op = await _migrate(client, admin, vm["id"])
    assert op is not None and op["state"] == "succeeded", op
    moved = await _vm(client, owner, vm["id"])
    target = moved["host_id"]
    assert target != source
    d = (await client.get(f"/v1/disks/{disk['id']}", headers=owner)).json()
    assert (d["host_id"], d["vm_id"], d["state"]) == (target, vm["id"], "in-use")
    copied = await storage_of(container, target).read(disk["id"], 3 << 20, len(payload))
    assert copied == payload
    assert await storage_of(container, source).get_volume(disk["id"]) is None
    r = await act(client, owner, vm["id"], "start")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    holder = next(h for h in container.sim_hypervisors.values() if h.find(vm["id"]))
    assert [x.id for x in holder.find(vm["id"]).disks] == [disk["id"]]  # type: ignore[union-attr]
