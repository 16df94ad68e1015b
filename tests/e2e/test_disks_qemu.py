"""Cloud disks on a real QEMU guest (TCG here) with the ``local`` storage pool, through
the API of an in-process all-in-one: one guest, its data checked by content.

Hot attach → the guest sees the disk; the guest writes known data; a live snapshot
(QEMU's internal snapshot of the image it holds); the guest overwrites it; an online
resize the guest sees without a reboot; rollback refused while the VM runs, done once it is
stopped → the original bytes, by checksum; detach; delete and purge → the volume file and
its space are gone. Every QEMU under the test's root is killed by PID at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.api.app import create_app
from altostack.bootstrap import build
from altostack.drivers.compute.qemu import QemuComputeDriver
from altostack.drivers.storage.ceph import CephStorageDriver
from altostack.drivers.storage.local import LocalStorageDriver
from tests.conftest import ADMIN_PASSWORD, login, make_settings
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import (
    GUEST_TIMEOUT,
    READY_MARK,
    SerialConsole,
    guest_image,
    kill_qemus_under,
)

pytestmark = [pytest.mark.slow, pytest.mark.real]
PASSWORD = "Guest-Pass-42"
SECTORS_PER_GIB = 1024**3 // 512
DEVICE_LINE = re.compile(r"^(vd[a-z]+) (\d+)\s*$", re.MULTILINE)
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")
FIND_DISK = "for d in /sys/block/vd*; do echo $(basename $d) $(cat $d/size); done"


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    target = tmp_path / "alto.db"
    shutil.copy(sqlite_template, target)
    yield f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="alto-dsk-"))  # short: QEMU's socket paths
    path.chmod(0o711)  # reachable for the qemu user, as /var/lib/altostack would be
    try:
        yield path
    finally:
        kill_qemus_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["local", "ceph"])
async def cloud(
    request: pytest.FixtureRequest, db_url: str, root: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    image = guest_image()
    backend: dict[str, Any] = {}
    if request.param == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        request.node.ceph_cluster = cluster
        config = cluster.driver_config(f"e2e{secrets.token_hex(4)}")
        # QEMU reads the cluster's conf and keyring itself: here they are root's files.
        backend = {"storage_backend": "ceph", "ceph": asdict(config), "qemu_run_as": ""}
    settings = make_settings(
        db_url, root, data_dir=root / "data", driver="qemu", seed=True,
        default_image=image, agent_timeout_seconds=30.0, heartbeat_interval_seconds=1.0,
        **backend,
    )  # fmt: skip
    c = build(settings, migrate=False)
    try:
        await c.start()
        app = create_app(c, manage_lifecycle=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as client:
            client.headers.update(await login(client, "admin", ADMIN_PASSWORD))
            yield client, c
    finally:
        await c.stop()


async def _op(client: httpx.AsyncClient, reply: httpx.Response) -> None:
    assert reply.status_code == 202, reply.text
    op = reply.json()["operation"]
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        body = (await client.get(f"/v1/operations/{op['id']}?wait=5")).json()
        if body["state"] in ("succeeded", "failed"):
            assert body["state"] == "succeeded", body
            return
    raise AssertionError(f"operation {op['id']} did not finish")


async def _disk(client: httpx.AsyncClient, disk_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/disks/{disk_id}")).json())


async def _devices(sh: SerialConsole) -> dict[str, int]:
    out = await sh.run(FIND_DISK)
    return {m.group(1): int(m.group(2)) for m in DEVICE_LINE.finditer(out)}


async def _until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.5)


async def test_disk_on_a_real_guest_attach_snapshot_resize_rollback_delete(
    cloud, request: pytest.FixtureRequest
) -> None:
    client, c = cloud
    agent = c.agents[0]
    driver = agent.compute
    pool = agent.disks.storage
    assert isinstance(driver, QemuComputeDriver)
    assert isinstance(pool, LocalStorageDriver | CephStorageDriver)
    pools = (await client.get("/v1/storage-pools")).json()["items"]
    assert [p["backend"] for p in pools] == [c.settings.storage_backend]

    image = (await client.get("/v1/images?name=alto-test")).json()["items"][0]
    body = {"name": "g", "instance_type": "c1.small", "image_id": image["id"],
            "password": PASSWORD}  # fmt: skip
    r = await client.post("/v1/vms", json=body)
    await _op(client, r)
    vm_id = r.json()["vm"]["id"]
    paths = driver.paths(vm_id)

    r = await client.post("/v1/disks", json={"name": "data", "size_gib": 1})
    await _op(client, r)
    disk_id = r.json()["disk"]["id"]

    async def stored() -> bool:
        return await pool.get_volume(disk_id) is not None

    assert await stored()

    async def ready() -> bool:
        return READY_MARK in driver.console_output(vm_id)

    await _until(ready, "the guest is ready", GUEST_TIMEOUT)
    async with SerialConsole.login(paths, "root", PASSWORD) as sh:
        before = await _devices(sh)
        await _op(client, await client.post(f"/v1/disks/{disk_id}/actions/attach",
                                            json={"vm_id": vm_id}))  # fmt: skip
        assert (await _disk(client, disk_id))["state"] == "in-use"

        async def plugged() -> str | None:
            new = set(await _devices(sh)) - set(before)
            return new.pop() if new else None

        dev = await _until(plugged, "the hot-plugged disk shows in the guest")
        assert (await _devices(sh))[dev] == SECTORS_PER_GIB

        # Known data, written and flushed by the guest.
        out = await sh.run(
            f"head -c 65536 /dev/urandom > /tmp/a && dd if=/tmp/a of=/dev/{dev} bs=65536 "
            "count=1 conv=fsync 2>/dev/null && sha256sum /tmp/a"
        )
        original = SHA256.findall(out)[-1]
        r = await client.post("/v1/snapshots", json={"disk_id": disk_id, "name": "before"})
        await _op(client, r)  # live: QEMU's internal snapshot of the image it holds
        snap_id = r.json()["snapshot"]["id"]
        await sh.run(f"dd if=/dev/zero of=/dev/{dev} bs=65536 count=1 conv=fsync 2>/dev/null")
        now = await sh.run(f"dd if=/dev/{dev} bs=65536 count=1 2>/dev/null | sha256sum")
        assert SHA256.findall(now)[-1] != original

        # Online resize: the guest sees 2 GiB without a reboot.
        await _op(client, await client.post(f"/v1/disks/{disk_id}/actions/resize",
                                            json={"size_gib": 2}))  # fmt: skip

        async def grown() -> bool:
            return (await _devices(sh)).get(dev) == 2 * SECTORS_PER_GIB

        await _until(grown, "the guest sees the new size")

    r = await client.post(f"/v1/snapshots/{snap_id}/actions/rollback")
    assert r.status_code == 409 and r.json()["current_state"] == "running"
    await _op(client, await client.post(f"/v1/vms/{vm_id}/actions/stop",
                                        json={"force": True}))  # fmt: skip
    await _op(client, await client.post(f"/v1/snapshots/{snap_id}/actions/rollback"))
    data = await pool.read(disk_id, 0, 65536)
    assert hashlib.sha256(data).hexdigest() == original  # the guest's bytes, as snapshotted
    assert (await _disk(client, disk_id))["size_gib"] == 1  # the size came back too

    await _op(client, await client.post(f"/v1/disks/{disk_id}/actions/detach"))
    assert await driver.list_disks(vm_id) == []
    used = (await pool.pool_info()).allocated_bytes
    await _op(client, await client.delete(f"/v1/disks/{disk_id}"))
    assert await stored()  # in the recycle bin, data kept
    r = await client.delete(f"/v1/recycle-bin/{disk_id}")
    assert r.status_code == 202
    await _op(client, httpx.Response(202, json={"operation": r.json()}))
    assert not await stored()
    assert (await pool.pool_info()).allocated_bytes < used  # space freed

    cluster = getattr(request.node, "ceph_cluster", None)
    if cluster is not None and cluster.procs:  # a reused cluster is not ours to break
        await _degraded_pool_is_reported(client, cluster)


async def _degraded_pool_is_reported(client: httpx.AsyncClient, cluster: Any) -> None:
    """An OSD down: the admin API shows the pool degraded in Ceph's words, then ok again."""
    (pool,) = (await client.get("/v1/storage-pools")).json()["items"]

    async def health(wanted: str) -> dict[str, Any] | None:
        got = (await client.get(f"/v1/storage-pools/{pool['id']}")).json()
        return got if got["health"] == wanted else None

    await _until(lambda: health("ok"), "the pool reported healthy", 30)
    cluster.kill_osd(1)
    try:
        seen = await _until(lambda: health("degraded"), "the pool reported degraded", 45)
        assert "OSD_DOWN" in seen["health_detail"], seen
    finally:
        cluster.start_osd(1)
    await _until(lambda: health("ok"), "the pool healthy again", 90)
    await asyncio.to_thread(cluster.wait_healthy, 60)
