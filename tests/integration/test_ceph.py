"""The ``ceph`` backend against a real cluster: QEMU opens its volumes, and an OSD dies.

The contract suite (tests/contract) checks the driver's promises; these check what only a
real cluster and a real QEMU show: the QEMU description of a volume really opens it
through librbd (both ways: data the driver wrote is what QEMU reads and the other way
round), and losing an OSD mid-write loses nothing, is reported as a degraded pool, and
heals when the OSD returns. Data is compared by checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from altostack.drivers.compute.base import DiskSpec
from altostack.drivers.compute.qemu_cmdline import disk_blockdev_args
from altostack.drivers.errors import DriverTimeout, InvalidState
from altostack.drivers.storage.base import GIB, VolumeSpec
from altostack.drivers.storage.ceph import CephStorageDriver
from tests.support.ceph import CephCluster
from tests.support.real import need_real

pytestmark = [pytest.mark.real, pytest.mark.slow]
MIB = 1024**2


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def _driver(cluster: CephCluster, **changes: Any) -> AsyncIterator[CephStorageDriver]:
    driver = CephStorageDriver(cluster.driver_config(f"t{secrets.token_hex(6)}", **changes))
    try:
        yield driver
    finally:
        await driver.close()


def _need_qemu_rbd() -> None:
    for tool in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            need_real(f"{tool} is not installed")
    formats = subprocess.run(
        ["qemu-img", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    if " rbd" not in formats:
        need_real("QEMU has no rbd block driver (qemu-block-extra is not installed)")


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    assert " failed: " not in done.stdout, done.stdout  # qemu-io reports failures on stdout
    return done.stdout


async def test_qemu_opens_a_volume_through_librbd(ceph_cluster: CephCluster) -> None:
    _need_qemu_rbd()
    async with _driver(ceph_cluster) as driver:
        vol_id = f"disk-{secrets.token_hex(4)}"
        await driver.ensure_volume(VolumeSpec(vol_id, 1))
        await driver.write(vol_id, MIB, b"\x5a" * (64 * 1024))

        # The rbd: file name (qemu-img, qemu-io): QEMU reads what the driver wrote...
        filename = driver.qemu_filename(vol_id)
        info = json.loads(
            await asyncio.to_thread(_run, ["qemu-img", "info", "--output=json", filename])
        )
        assert (info["format"], info["virtual-size"]) == ("raw", GIB)
        io = ["qemu-io", "-f", "raw", "-c"]
        await asyncio.to_thread(_run, [*io, "read -P 0x5a 1M 64k", filename])
        # ... and the driver reads what QEMU wrote.
        await asyncio.to_thread(_run, [*io, "write -P 0xa5 4M 4k", filename])
        assert await driver.read(vol_id, 4 * MIB, 4096) == b"\xa5" * 4096

        # The -blockdev description: a QEMU process opens it, QMP sees it, and while it is
        # open the volume cannot be deleted (the watcher is QEMU); block_resize grows it.
        # The nodes are those the qemu compute driver makes for a DiskSpec with a protocol.
        disk = DiskSpec("vol0", "", "raw", protocol=tuple(driver.qemu_blockdev(vol_id).items()))
        nodes_args = disk_blockdev_args(disk)
        assert nodes_args[0]["driver"] == "rbd"
        node = nodes_args[-1]["node-name"]
        blockdevs = [arg for n in nodes_args for arg in ("-blockdev", json.dumps(n))]
        async with _qemu(blockdevs) as qmp:
            nodes = await qmp.execute("query-named-block-nodes")
            rbd_nodes = [n for n in nodes if n["drv"] == "rbd"]
            assert len(rbd_nodes) == 1 and rbd_nodes[0]["image"]["virtual-size"] == GIB
            with pytest.raises(InvalidState, match=r"in use|open by"):
                await driver.delete_volume(vol_id)
            await qmp.execute("block_resize", {"node-name": node, "size": 2 * GIB})
            info_after = await driver.get_volume(vol_id)
            assert info_after is not None and info_after.size_gib == 2
        await driver.delete_volume(vol_id)
        assert await driver.get_volume(vol_id) is None


@contextlib.asynccontextmanager
async def _qemu(extra: list[str]) -> AsyncIterator[Any]:
    """A QEMU with no guest (``-machine none``) and its QMP client; killed by PID after."""
    from qemu.qmp import QMPClient

    work = Path(tempfile.mkdtemp(prefix="alto-rbd-qemu-"))
    sock = work / "qmp.sock"
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-qmp", f"unix:{sock},server=on,wait=off", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    client = QMPClient("rbd-test")
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"QEMU did not start: {err.decode()}")
            await asyncio.sleep(0.05)
        await asyncio.wait_for(client.connect(str(sock)), 30)
        yield client
    finally:
        # quit, not kill: a killed QEMU's watch on the image lingers ~30 s (the OSDs'
        # watch timeout), and the volume counts as in use until then
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.execute("quit"), 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        shutil.rmtree(work, ignore_errors=True)


async def _until(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    """Poll the coroutine function ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s (last: {last!r})")


async def test_losing_an_osd_mid_write_loses_nothing_and_heals(ceph_cluster: CephCluster) -> None:
    if ceph_cluster.daemon_pid("osd.1") is None:
        pytest.skip("the cluster's daemons are not ours (ALTO_TEST_CEPH_DIR): cannot kill OSDs")
    async with _driver(ceph_cluster) as driver:
        vol_id = f"disk-{secrets.token_hex(4)}"
        await driver.ensure_volume(VolumeSpec(vol_id, 1))
        written: dict[int, str] = {}
        block = 256 * 1024

        async def write(n: int) -> None:
            data = os.urandom(block)
            await asyncio.wait_for(driver.write(vol_id, n * block, data), 60)
            written[n * block] = _sha(data)

        for n in range(8):
            await write(n)
        writer_started = time.monotonic()
        ceph_cluster.kill_osd(1)  # SIGKILL: its peers must notice (heartbeat grace 4 s)
        for n in range(8, 40):  # writes go on through the failure
            await write(n)
        assert time.monotonic() - writer_started < 60

        async def degraded() -> Any:
            info = await driver.pool_info()
            return info if info.health == "degraded" and "OSD_DOWN" in info.health_detail else None

        info = await _until("pool reported degraded", degraded, 30)
        assert "osd" in info.health_detail.lower()
        for offset, digest in written.items():  # everything reads back while degraded
            assert _sha(await driver.read(vol_id, offset, block)) == digest

        ceph_cluster.start_osd(1)

        async def healthy() -> Any:
            info = await driver.pool_info()
            return info if info.health == "ok" else None

        await _until("pool healthy again", healthy, 90)
        await asyncio.to_thread(ceph_cluster.wait_healthy, 60)
        for offset, digest in written.items():
            assert _sha(await driver.read(vol_id, offset, block)) == digest


async def test_with_two_osds_down_io_fails_in_time_instead_of_hanging(
    ceph_cluster: CephCluster,
) -> None:
    if ceph_cluster.daemon_pid("osd.1") is None:
        pytest.skip("the cluster's daemons are not ours (ALTO_TEST_CEPH_DIR): cannot kill OSDs")
    async with _driver(ceph_cluster, op_timeout=3.0) as driver:
        vol_id = f"disk-{secrets.token_hex(4)}"
        await driver.ensure_volume(VolumeSpec(vol_id, 1))
        await driver.write(vol_id, 0, b"before")
        ceph_cluster.kill_osd(1)
        ceph_cluster.kill_osd(2)
        try:
            started = time.monotonic()
            with pytest.raises(DriverTimeout):  # min_size 2: the PGs stop taking writes
                await asyncio.wait_for(driver.write(vol_id, 0, os.urandom(4096)), 30)
            assert time.monotonic() - started < 15
            info = await asyncio.wait_for(driver.pool_info(), 30)
            assert info.health in ("degraded", "error") and info.health_detail
        finally:
            ceph_cluster.start_osd(1)
            ceph_cluster.start_osd(2)
        await asyncio.to_thread(ceph_cluster.wait_healthy, 90)


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
async def test_qcow2_and_vmdk_images_are_stored_raw_and_cloned(
    ceph_cluster: CephCluster, fmt: str, tmp_path: Path
) -> None:
    _need_qemu_rbd()
    image = tmp_path / f"disk.{fmt}"
    _run(["qemu-img", "create", "-q", "-f", fmt, str(image), "64M"])
    _run(["qemu-io", "-f", fmt, "-c", "write -P 0x3c 3M 64k", str(image)])
    data = image.read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1 << 16):
            yield data[start : start + (1 << 16)]

    async with _driver(ceph_cluster) as driver:
        info = await driver.import_image("img-1", chunks(), expected_sha256=_sha(data))
        assert (info.format, info.virtual_size_bytes, info.size_bytes) == (fmt, 64 * MIB, len(data))
        vol = await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-1")))
        assert vol.backing is not None and vol.backing.endswith("img.img-1@base")
        assert await driver.read("disk-1", 3 * MIB, 64 * 1024) == b"\x3c" * 64 * 1024
        assert await driver.read("disk-1", 0, 4096) == bytes(4096)


async def test_twenty_parallel_snapshots_and_clones_leave_a_consistent_chain(
    ceph_cluster: CephCluster,
) -> None:
    async with _driver(ceph_cluster) as driver:
        source = "disk-src"
        await driver.ensure_volume(VolumeSpec(source, 1))
        data = os.urandom(64 * 1024)
        await driver.write(source, 0, data)
        snaps = [f"snap-{n}" for n in range(10)]
        clones = [f"disk-c{n}" for n in range(10)]
        await asyncio.gather(
            *(driver.create_snapshot(source, s) for s in snaps),
            *(driver.ensure_volume(VolumeSpec(c, 1, ("volume", source))) for c in clones),
        )
        assert [s.id for s in await driver.list_snapshots(source)] == sorted(snaps)
        where = driver.config.pool + "/" + driver.config.namespace
        for clone in clones:  # each clone rests on its own hidden snapshot of the source
            info = await driver.get_volume(clone)
            assert info is not None and info.backing == f"{where}/vol.{source}@.clone.{clone}"
            assert _sha(await driver.read(clone, 0, len(data))) == _sha(data)
        from_snaps = [f"disk-f{n}" for n in range(3)]  # every snapshot: the contract suite
        await asyncio.gather(
            *(
                driver.ensure_volume(VolumeSpec(f, 1, ("snapshot", s)))
                for f, s in zip(from_snaps, snaps[:3], strict=True)
            )
        )
        await driver.delete_volume(source, force=True)  # parent goes first: trashed, not lost
        for vol_id in clones + from_snaps:
            assert _sha(await driver.read(vol_id, 0, len(data))) == _sha(data)
        # (freeing the trashed source once its clones go: the contract suite's
        # test_deleting_everything_in_any_order_frees_everything)
