"""The all-in-one with the ``qemu`` driver, through the HTTP API only: one real guest.

The control plane runs in-process with SQLite in a temporary data directory and this
machine as its one QEMU host (TCG here). The test checks what a new user sees: the host
with its real capacity and accelerator, the test guest as the default public image (with
its checksum), a VM created through ``POST /v1/vms`` that reaches ``running`` and prints
``ALTO-GUEST-READY`` on ``console-output``, its counters, and stop + delete + purge
leaving no QEMU process behind (checked by PID). Every QEMU under the data directory is
killed by PID at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.api.app import create_app
from altostack.bootstrap import build
from altostack.drivers.compute.local_images import sha256_file
from altostack.drivers.compute.qemu_host import detect_accel, host_cores, host_memory_mib
from altostack.drivers.compute.qemu_process import process_alive
from tests.conftest import ADMIN_PASSWORD, login, make_settings
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, guest_image, kill_qemus_under

pytestmark = [pytest.mark.slow, pytest.mark.real]
READY = re.compile(r"^ALTO-GUEST-READY ip=(\S+) hostname=(\S+)", re.MULTILINE)


@pytest.fixture
async def cloud() -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    image = guest_image()
    # A short root: QEMU's unix sockets live under it (108-byte limit on their paths).
    root = Path(tempfile.mkdtemp(prefix="alto-aio-"))
    settings = make_settings(
        f"sqlite+aiosqlite:///{root / 'alto.db'}",
        root,
        driver="qemu",
        seed=True,
        default_image=image,
        agent_timeout_seconds=15.0,
        heartbeat_interval_seconds=1.0,
    )
    container = build(settings)
    try:
        await container.start()
        app = create_app(container, manage_lifecycle=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as client:
            yield client, root
    finally:
        try:
            await container.stop()
        finally:
            kill_qemus_under(root)
            shutil.rmtree(root, ignore_errors=True)


async def _wait_op(client: httpx.AsyncClient, headers: dict[str, str], op: dict[str, Any]) -> None:
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        body = (await client.get(f"/v1/operations/{op['id']}?wait=5", headers=headers)).json()
        if body["state"] in ("succeeded", "failed"):
            assert body["state"] == "succeeded", body
            return
    raise AssertionError(f"operation {op['id']} did not finish")


async def test_a_new_user_boots_the_default_image_through_the_api(cloud) -> None:
    client, root = cloud
    admin = await login(client, "admin", ADMIN_PASSWORD)

    hosts = (await client.get("/v1/hosts", headers=admin)).json()["items"]
    assert len(hosts) == 1
    host = hosts[0]
    assert host["accel"] == detect_accel() and host["state"] == "up"
    assert host["capacity"]["cores"] == host_cores()
    assert host["capacity"]["memory_mib"] == host_memory_mib()
    assert host["capacity"]["disk_gib"] == shutil.disk_usage(root).total // 1024**3

    images = (await client.get("/v1/images?name=alto-test", headers=admin)).json()["items"]
    assert [i["state"] for i in images] == ["available"]
    image = images[0]
    assert image["visibility"] == "public" and image["format"] == "qcow2"
    assert image["checksum_sha256"] == sha256_file(guest_image())
    assert not (await client.get("/v1/images?name=cirros-sim", headers=admin)).json()["items"]

    r = await client.post(
        "/v1/vms",
        json={"name": "aio-guest", "instance_type": "c1.small", "image_id": image["id"]},
        headers=admin,
    )
    assert r.status_code == 202, r.text
    vm_id = r.json()["vm"]["id"]
    await _wait_op(client, admin, r.json()["operation"])
    vm = (await client.get(f"/v1/vms/{vm_id}", headers=admin)).json()
    assert (vm["state"], vm["accel"], vm["host_id"]) == ("running", detect_accel(), host["id"])

    # The base image came from the image store into the host's cache, verified.
    cached = root / "data" / "qemu" / "images" / f"{image['id']}.qcow2"
    assert sha256_file(cached) == image["checksum_sha256"]
    pid = int((root / "data" / "qemu" / "vms" / vm_id / "qemu.pid").read_text())
    assert process_alive(pid, vm_id)

    started = time.monotonic()
    output = ""
    while not (found := READY.search(output)):
        assert time.monotonic() - started < GUEST_TIMEOUT, f"no readiness line:\n{output}"
        await asyncio.sleep(1.0)
        r = await client.get(f"/v1/vms/{vm_id}/console-output?lines=200", headers=admin)
        assert r.status_code == 200, r.text
        output = r.json()["output"]
    assert found.group(2) == "aio-guest"
    tail = (await client.get(f"/v1/vms/{vm_id}/console-output?lines=5", headers=admin)).json()
    assert tail["lines"] <= 5

    stats = (await client.get(f"/v1/vms/{vm_id}/stats", headers=admin)).json()
    assert stats["cpu_time_ns"] > 10**9  # booting costs CPU-seconds under any accelerator
    assert stats["memory_rss_bytes"] > 32 * 1024**2
    assert (stats["vcpus"], stats["memory_mib"]) == (1, 512)
    disks = {d["name"]: d for d in stats["disks"]}
    assert disks["root-disk"]["read_bytes"] > 10**6 and disks["seed-disk"]["read_ops"] > 0

    r = await client.post(f"/v1/vms/{vm_id}/actions/stop", json={"timeout": 30}, headers=admin)
    await _wait_op(client, admin, r.json()["operation"])
    assert (await client.get(f"/v1/vms/{vm_id}", headers=admin)).json()["state"] == "stopped"
    assert not process_alive(pid, vm_id)
    assert (await client.get(f"/v1/vms/{vm_id}/stats", headers=admin)).status_code == 409
    assert (
        "Power down"
        in (await client.get(f"/v1/vms/{vm_id}/console-output", headers=admin)).json()["output"]
    )

    r = await client.delete(f"/v1/vms/{vm_id}", headers=admin)
    await _wait_op(client, admin, r.json()["operation"])
    r = await client.delete(f"/v1/recycle-bin/{vm_id}", headers=admin)
    await _wait_op(client, admin, r.json())
    assert not (root / "data" / "qemu" / "vms" / vm_id).exists()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and process_alive(int(p), str(root))]
