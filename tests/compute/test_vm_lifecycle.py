"""Every VM state transition through the API, on the sim driver, with the guest checked."""

from __future__ import annotations

from tests.compute.conftest import act, create_vm, wait_op


async def _done(client, owner, response, expect="succeeded"):
    assert response.status_code == 202, response.text
    op = response.json()["operation"]
    if op is None:
        return None
    finished = await wait_op(client, owner, op)
    assert finished["state"] == expect, finished
    return finished


async def _vm(client, owner, vm_id):
    return (await client.get(f"/v1/vms/{vm_id}", headers=owner)).json()


async def test_create_shape_and_guest(client, owner, container):
    vm = await create_vm(
        client,
        owner,
        "web-1",
        password="Guest-Pass-1",
        ssh_keys=["ssh-ed25519 AAAA k"],
        tags={"team": "web"},
    )
    assert vm["state"] == "running" and vm["power_state"] == "running"
    assert vm["instance_type"] == "c1.small" and vm["vcpus"] == 1 and vm["memory_mib"] == 512
    assert vm["host_id"].startswith("host-") and vm["id"].startswith("vm-")
    assert vm["observed_generation"] == vm["generation"] == 1
    guest = _guest(container, vm)
    assert guest.passwords.get("root") == "Guest-Pass-1" and guest.ssh_keys == (
        "ssh-ed25519 AAAA k",
    )
    # the operation no longer keeps the password
    ops = (await client.get(f"/v1/operations?resource_id={vm['id']}", headers=owner)).json()
    assert ops["items"][0]["kind"] == "vm.create"


def _guest(container, vm):
    host = next(h for h in container.sim_hypervisors.values() if h.find(vm["id"]))
    return host.guest(vm["id"])


async def test_stop_start_reboot_and_noops(client, owner, container):
    vm = await create_vm(client, owner)
    r = await act(client, owner, vm["id"], "stop")
    assert r.json()["vm"]["state"] == "stopping"
    await _done(client, owner, r)
    assert (await _vm(client, owner, vm["id"]))["state"] == "stopped"
    r = await act(client, owner, vm["id"], "stop")  # already stopped: a no-op success
    assert r.status_code == 202 and r.json()["operation"] is None
    r = await act(client, owner, vm["id"], "reboot")
    assert r.status_code == 409 and r.json()["current_state"] == "stopped"
    assert "stopped" in r.json()["detail"]
    await _done(client, owner, await act(client, owner, vm["id"], "start"))
    assert (await _vm(client, owner, vm["id"]))["state"] == "running"
    boots = _guest(container, vm).boots
    await _done(client, owner, await act(client, owner, vm["id"], "reboot"))
    assert _guest(container, vm).boots == boots + 1
    r = await act(client, owner, vm["id"], "start")
    assert r.json()["operation"] is None


async def test_reinstall_resize_password(client, owner, container):
    vm = await create_vm(client, owner)
    r = await act(client, owner, vm["id"], "reinstall")
    assert r.status_code == 409 and r.json()["current_state"] == "running"
    await _done(
        client, owner, await act(client, owner, vm["id"], "reset-password", password="New-Pass-22")
    )
    assert _guest(container, vm).passwords["root"] == "New-Pass-22"

    # Live grow; shrinking a running VM needs allow_restart.
    await _done(
        client, owner, await act(client, owner, vm["id"], "resize", instance_type="c1.medium")
    )
    now = await _vm(client, owner, vm["id"])
    assert (now["vcpus"], now["memory_mib"], now["state"]) == (2, 2048, "running")
    r = await act(client, owner, vm["id"], "resize", instance_type="c1.small")
    assert r.status_code == 409 and "allow_restart" in r.json()["detail"]
    await _done(
        client,
        owner,
        await act(client, owner, vm["id"], "resize", instance_type="c1.small", allow_restart=True),
    )
    now = await _vm(client, owner, vm["id"])
    assert (now["vcpus"], now["state"]) == (1, "running")

    await _done(client, owner, await act(client, owner, vm["id"], "stop"))
    installs = _guest(container, vm).installs
    await _done(client, owner, await act(client, owner, vm["id"], "reinstall"))
    assert _guest(container, vm).installs == installs + 1
    assert (await _vm(client, owner, vm["id"]))["state"] == "stopped"


async def test_delete_recycle_restore_purge(client, owner, container):
    vm = await create_vm(client, owner)
    quotas = (await client.get("/v1/quotas", headers=owner)).json()["quotas"]
    assert quotas["vms"]["usage"] == 1
    r = await client.delete(f"/v1/vms/{vm['id']}", headers=owner)
    await _done(client, owner, r)
    gone = await _vm(client, owner, vm["id"])
    assert gone["state"] == "deleted" and gone["purge_after"] is not None
    assert vm["id"] not in (await client.get("/v1/vms", headers=owner)).text
    assert vm["id"] in (await client.get("/v1/recycle-bin", headers=owner)).text
    assert (await client.get("/v1/quotas", headers=owner)).json()["quotas"]["vms"]["usage"] == 0
    r = await act(client, owner, vm["id"], "start")
    assert r.status_code == 409 and r.json()["current_state"] == "deleted"

    await _done(client, owner, await act(client, owner, vm["id"], "restore"))
    assert (await _vm(client, owner, vm["id"]))["state"] == "stopped"
    assert (await client.get("/v1/quotas", headers=owner)).json()["quotas"]["vms"]["usage"] == 1

    await _done(client, owner, await client.delete(f"/v1/vms/{vm['id']}", headers=owner))
    r = await client.delete(f"/v1/recycle-bin/{vm['id']}", headers=owner)
    assert r.status_code == 202
    op = await wait_op(client, owner, r.json())
    assert op["state"] == "succeeded"
    assert (await client.get(f"/v1/vms/{vm['id']}", headers=owner)).status_code == 404
    assert all(h.find(vm["id"]) is None for h in container.sim_hypervisors.values())


async def test_console_token(client, owner):
    vm = await create_vm(client, owner)
    r = await act(client, owner, vm["id"], "console")
    assert r.status_code == 200 and r.json()["token"] in r.json()["url"]


async def test_batch_create(client, owner):
    from tests.compute.conftest import image_id

    body = {
        "name": "batch",
        "instance_type": "c1.small",
        "image_id": await image_id(client, owner),
        "count": 3,
    }
    r = await client.post("/v1/vms", json=body, headers=owner)
    assert r.status_code == 202, r.text
    names = sorted(v["name"] for v in r.json()["vms"])
    assert names == ["batch-1", "batch-2", "batch-3"] and len(r.json()["operations"]) == 3
    for op in r.json()["operations"]:
        assert (await wait_op(client, owner, op))["state"] == "succeeded"
