"""Reads from a VM's host: console output and resource counters, over the API, on sim hosts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.compute.conftest import act, create_vm, wait_op
from tests.conftest import make_settings
from tests.identity.helpers import make_tenant


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, sim_hosts=1, agent_timeout_seconds=0.5)


async def test_console_output_shows_the_boot_and_readiness(client, owner):
    vm = await create_vm(client, owner, "web-1")
    r = await client.get(f"/v1/vms/{vm['id']}/console-output", headers=owner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["vm_id"] == vm["id"] and body["host_id"] == vm["host_id"]
    assert "ALTO-GUEST-READY ip=none hostname=web-1" in body["output"]
    assert body["lines"] == len(body["output"].splitlines()) <= 50

    r = await client.get(f"/v1/vms/{vm['id']}/console-output?lines=3", headers=owner)
    assert r.json()["lines"] == 3
    assert r.json()["output"].splitlines()[-1] == "web-1 login: "

    # A reboot appends a second boot; the log spans boots.
    op = (await act(client, owner, vm["id"], "reboot")).json()["operation"]
    assert (await wait_op(client, owner, op))["state"] == "succeeded"
    r = await client.get(f"/v1/vms/{vm['id']}/console-output?lines=1000", headers=owner)
    assert r.json()["output"].count("ALTO-GUEST-READY") == 2


async def test_console_output_checks_lines_and_tenancy(client, owner, admin):
    vm = await create_vm(client, owner)
    for bad in (0, 1001, -1):
        r = await client.get(f"/v1/vms/{vm['id']}/console-output?lines={bad}", headers=owner)
        assert r.status_code == 422, r.text
    _, other = await make_tenant(client, admin, "other")
    r = await client.get(f"/v1/vms/{vm['id']}/console-output", headers=other)
    assert r.status_code == 404
    r = await client.get(f"/v1/vms/{vm['id']}/stats", headers=other)
    assert r.status_code == 404


async def test_stats_grow_and_need_a_running_vm(client, owner, container):
    hypervisor = next(iter(container.sim_hypervisors.values()))
    vm = await create_vm(client, owner)
    assert vm["accel"] == "sim"
    first = (await client.get(f"/v1/vms/{vm['id']}/stats", headers=owner)).json()
    assert first["vcpus"] == 1 and first["memory_mib"] == 512
    assert first["cpu_time_ns"] > 0 and first["memory_rss_bytes"] > 0
    assert {d["name"] for d in first["disks"]} == {"root-disk", "seed-disk"}
    assert first["nics"] == []
    # Time passes on the host: the counters grow.
    later = hypervisor.clock() + timedelta(seconds=120)
    hypervisor.clock = lambda: later
    second = (await client.get(f"/v1/vms/{vm['id']}/stats", headers=owner)).json()
    assert second["cpu_time_ns"] > first["cpu_time_ns"]
    root = [next(d for d in s["disks"] if d["name"] == "root-disk") for s in (first, second)]
    assert root[1]["read_bytes"] > root[0]["read_bytes"]
    assert second["started_at"] == first["started_at"]

    r = await act(client, owner, vm["id"], "stop", force=True)
    await wait_op(client, owner, r.json()["operation"])
    r = await client.get(f"/v1/vms/{vm['id']}/stats", headers=owner)
    assert r.status_code == 409, r.text
    assert r.json()["driver_error"] == "InvalidState"
    # The console log survives the stop.
    r = await client.get(f"/v1/vms/{vm['id']}/console-output", headers=owner)
    assert r.status_code == 200 and "ALTO-GUEST-READY" in r.json()["output"]


async def test_a_silent_agent_is_503(client, owner, container):
    vm = await create_vm(client, owner)
    for agent in container.agents:
        await agent.stop()
    started = asyncio.get_running_loop().time()
    r = await client.get(f"/v1/vms/{vm['id']}/console-output", headers=owner)
    assert r.status_code == 503, r.text
    assert "did not answer" in r.json()["detail"]
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_vm_without_a_host_is_409(client, owner, container):
    vm = await create_vm(client, owner, wait=False)
    async with container.db.uow() as uow:
        from altostack.db.models_compute import Vm

        row = await uow.session.get(Vm, vm["id"])
        assert row is not None
        row.host_id = None
        await uow.commit()
    r = await client.get(f"/v1/vms/{vm['id']}/console-output", headers=owner)
    assert r.status_code == 409, r.text


async def test_an_agent_downloads_base_images_from_the_image_service(client, admin, container):
    """``alto agent --driver qemu`` fills its image cache over the API, verified."""
    import hashlib

    import httpx

    from altostack.agent.images import HttpImageSource
    from altostack.api.app import create_app
    from altostack.client import AsyncClient
    from altostack.drivers.compute.local_images import LocalImageCache
    from altostack.drivers.errors import ImageNotFound

    data = b"\x01\x02" * 40000
    image = (await client.post("/v1/images", json={"name": "payload"}, headers=admin)).json()
    r = await client.put(
        f"/v1/images/{image['id']}/file",
        content=data,
        headers={**admin, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    token = admin["Authorization"].removeprefix("Bearer ")
    transport = httpx.ASGITransport(app=create_app(container, manage_lifecycle=False))
    sdk = AsyncClient("http://alto.test", token=token, transport=transport)
    try:
        target = container.settings.data_dir / "fetched"
        fetched = await HttpImageSource(sdk).fetch(image["id"], target)
        assert fetched.format == "raw"
        assert fetched.sha256 == hashlib.sha256(data).hexdigest()
        assert target.read_bytes() == data
        cache = LocalImageCache(container.settings.data_dir / "cache", HttpImageSource(sdk))
        with pytest.raises(ImageNotFound):
            await cache.ensure("img-missing")
    finally:
        await sdk.aclose()
