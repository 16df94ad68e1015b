"""Agents and reconciliation: silent agents, guest shutdowns, crashes, orphans, dead hosts."""

from __future__ import annotations

import asyncio

import pytest

from altostack.drivers.compute.base import VmSpec
from tests.compute.conftest import create_vm, image_id, wait_op
from tests.conftest import make_settings


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(
        db_url,
        tmp_path,
        sim_hosts=2,
        operation_max_attempts=2,
        agent_timeout_seconds=0.3,
        heartbeat_timeout_seconds=1.0,
    )


def _hypervisor(container, vm):
    return next(h for h in container.sim_hypervisors.values() if h.find(vm["id"]))


async def _eventually(check, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def _vm(client, owner, vm_id):
    return (await client.get(f"/v1/vms/{vm_id}", headers=owner)).json()


async def test_a_reconcile_queued_on_an_old_report_follows_a_guest_shutdown(
    client, owner, container
):
    """A heartbeat taken before the guest shut down queues a reconcile; when it runs it
    must see the shutdown and follow it, not start the guest again (seen under load)."""
    vm = await create_vm(client, owner)
    _hypervisor(container, vm).guest_shutdown(vm["id"])
    await container.host_monitor._operation(vm["id"], "vm.reconcile", tenant_id=None)

    async def stopped():
        now = await _vm(client, owner, vm["id"])
        return now if now["state"] == "stopped" else None

    now = await _eventually(stopped)
    assert now["power_state"] == "stopped"
    assert _hypervisor(container, vm).find(vm["id"]).state == "stopped"  # not restarted


async def test_guest_shutdown_updates_the_spec(client, owner, container):
    vm = await create_vm(client, owner)
    _hypervisor(container, vm).guest_shutdown(vm["id"])

    async def stopped():
        now = await _vm(client, owner, vm["id"])
        return now if now["state"] == "stopped" else None

    now = await _eventually(stopped)
    assert now["power_state"] == "stopped"
    events = (
        await client.get(
            f"/v1/events?resource_id={vm['id']}&action=vm.guest-shutdown", headers=owner
        )
    ).json()["items"]
    assert events


async def test_crashed_vm_is_started_again(client, owner, container):
    vm = await create_vm(client, owner)
    hypervisor = _hypervisor(container, vm)
    boots = hypervisor.guest(vm["id"]).boots
    hypervisor.crash(vm["id"])

    async def rebooted():
        return (
            hypervisor.guest(vm["id"]).boots > boots
            and hypervisor.find(vm["id"]).state == "running"
        )

    await _eventually(rebooted)
    ops = (
        await client.get(f"/v1/operations?resource_id={vm['id']}&kind=vm.reconcile", headers=owner)
    ).json()["items"]
    assert ops


async def test_orphans_are_reported_not_destroyed(client, admin, owner, container):
    await create_vm(client, owner)
    hypervisor = next(iter(container.sim_hypervisors.values()))
    spec = VmSpec(
        id="vm-orphan000000001",
        name="ghost",
        generation=1,
        vcpus=1,
        memory_mib=256,
        root_disk_gib=1,
        image_id="img-x",
    )
    driver = next(a.compute for a in container.agents if a.compute.hypervisor is hypervisor)
    await driver.ensure_vm(spec)

    async def reported():
        r = await client.get("/v1/events?action=vm.orphan", headers=admin)
        return r.json()["items"]

    events = await _eventually(reported)
    assert events[0]["resource_id"] == "vm-orphan000000001"
    assert hypervisor.find("vm-orphan000000001") is not None  # left untouched


async def test_silent_agent_fails_the_operation_visibly(client, owner, container):
    vm = await create_vm(client, owner)
    agent = next(a for a in container.agents if a.host_id == vm["host_id"])
    await agent.stop()
    r = await client.post(f"/v1/vms/{vm['id']}/actions/stop", json={"timeout": 1}, headers=owner)
    op = await wait_op(client, owner, r.json()["operation"])
    assert op["state"] == "failed" and "did not answer" in op["error"]["message"]
    now = await _vm(client, owner, vm["id"])
    assert now["state"] == "error" and "did not answer" in now["reason"]

    async def host_down():
        host = (await client.get(f"/v1/hosts/{vm['host_id']}", headers=container_admin)).json()
        return host["state"] == "down"

    container_admin = await _admin(client)
    await _eventually(host_down)
    # New VMs go to the live host only.
    image = await image_id(client, owner)
    for i in range(3):
        r = await client.post(
            "/v1/vms",
            json={"name": f"after-{i}", "instance_type": "c1.small", "image_id": image},
            headers=owner,
        )
        assert r.json()["vm"]["host_id"] != vm["host_id"]


async def _admin(client):
    from tests.conftest import ADMIN_PASSWORD, login

    return await login(client, "admin", ADMIN_PASSWORD)
