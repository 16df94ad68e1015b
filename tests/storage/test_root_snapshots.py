"""Snapshots of a VM's root disk through the API (sim cloud): ``{"vm_id"}`` instead of a
disk, live or stopped, rolled back only while stopped, limited per VM, gone with a
reinstall, not a source of new disks, and in the way of a migration."""

from __future__ import annotations

from typing import Any

import httpx

from altostack.bootstrap import Container
from tests.compute.conftest import act, create_vm, wait_op


async def _snap(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> tuple[httpx.Response, dict[str, Any] | None]:
    r = await client.post("/v1/snapshots", json={"name": "s", **body}, headers=headers)
    if r.status_code != 202:
        return r, None
    return r, await wait_op(client, headers, r.json()["operation"])


async def _usage(client: httpx.AsyncClient, admin: dict[str, str], tenant_id: str) -> int:
    r = await client.get(f"/v1/quotas?tenant_id={tenant_id}", headers=admin)
    return int(r.json()["quotas"]["snapshots"]["usage"])


def _guest(container: Container, vm_id: str) -> Any:
    host = next(h for h in container.sim_hypervisors.values() if h.find(vm_id))
    return host.guest(vm_id)


async def test_root_snapshot_life_cycle(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    vm = await create_vm(client, owner, password="First-Pass-1")
    r, _ = await _snap(client, owner, vm_id=vm["id"], disk_id="disk-x")
    assert r.status_code == 400, r.text
    r, op = await _snap(client, owner, vm_id=vm["id"])  # live
    assert op is not None and op["state"] == "succeeded", op
    snap = r.json()["snapshot"]
    assert (snap["vm_id"], snap["disk_id"]) == (vm["id"], None)
    listed = (await client.get(f"/v1/snapshots?vm_id={vm['id']}", headers=owner)).json()
    assert [s["id"] for s in listed["items"]] == [snap["id"]]
    assert listed["items"][0]["state"] == "available"
    assert await _usage(client, admin, vm["tenant_id"]) == 1

    r = await act(client, owner, vm["id"], "reset-password", password="Second-Pass-2")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    assert _guest(container, vm["id"]).passwords["root"] == "Second-Pass-2"
    r = await client.post(f"/v1/snapshots/{snap['id']}/actions/rollback", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "running", r.text
    r = await act(client, owner, vm["id"], "stop")
    await wait_op(client, owner, r.json()["operation"])
    r = await client.post(f"/v1/snapshots/{snap['id']}/actions/rollback", headers=owner)
    assert r.status_code == 202, r.text
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    assert _guest(container, vm["id"]).passwords["root"] == "First-Pass-1"  # the disk went back

    # Not a source of disks; in the way of a move.
    r = await client.post("/v1/disks", json={"name": "d", "snapshot_id": snap["id"]}, headers=owner)
    assert r.status_code == 409 and "root disk" in r.json()["detail"], r.text
    r = await client.post(f"/v1/vms/{vm['id']}/actions/migrate", json={}, headers=admin)
    assert r.status_code == 409 and r.json()["snapshot_ids"] == [snap["id"]], r.text

    # Reinstall: a new root disk, the snapshots (and their quota) go.
    r = await act(client, owner, vm["id"], "reinstall")
    op = await wait_op(client, owner, r.json()["operation"])
    assert op["state"] == "succeeded", op
    listed = (await client.get(f"/v1/snapshots?vm_id={vm['id']}", headers=owner)).json()
    assert listed["items"] == []
    assert await _usage(client, admin, vm["tenant_id"]) == 0


async def test_root_snapshot_limit_and_delete(
    client: httpx.AsyncClient, admin: dict[str, str], owner: dict[str, str], container: Container
) -> None:
    vm = await create_vm(client, owner)
    ids = []
    for _ in range(10):
        r, op = await _snap(client, owner, vm_id=vm["id"])
        assert op is not None and op["state"] == "succeeded", op
        ids.append(r.json()["snapshot"]["id"])
    r, _ = await _snap(client, owner, vm_id=vm["id"])
    assert r.status_code == 409 and r.json()["limit"] == 10, r.text
    r = await client.delete(f"/v1/snapshots/{ids[3]}", headers=owner)  # live delete
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    host = next(h for h in container.sim_hypervisors.values() if h.find(vm["id"]))
    assert list(host.find(vm["id"]).root_snapshots) == ids[:3] + ids[4:]  # type: ignore[union-attr]
    r, op = await _snap(client, owner, vm_id=vm["id"])
    assert op is not None and op["state"] == "succeeded"
    r, _ = await _snap(client, owner, vm_id="vm-nope")
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "vm_id"
