"""Disk export on the host side: the compact qcow2 writer, the sim pool's extent map and
the agent's pin / read / drop steps."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Literal

import pytest

from altostack.agent.exports import DiskExports
from altostack.drivers.compute.base import VmSpec
from altostack.drivers.compute.sim import SimComputeDriver
from altostack.drivers.errors import InvalidState, NotSupported
from altostack.drivers.storage.base import GIB, VolumeSpec, root_volume_id
from altostack.drivers.storage.qcow2 import CLUSTER, Qcow2Layout
from altostack.drivers.storage.sim import SimStorageDriver
from altostack.drivers.timings import SimTimings
from tests.support.real import need_real

FAST = SimTimings().scaled(0.0)


def parse_qcow2(image: bytes) -> tuple[int, dict[int, bytes]]:
    """Virtual size and guest cluster → data, read back the way QEMU reads it."""
    magic, version = struct.unpack_from(">4sI", image, 0)
    assert (magic, version) == (b"QFI\xfb", 2)
    (size,) = struct.unpack_from(">Q", image, 24)
    l1_size, l1_offset = struct.unpack_from(">IQ", image, 36)
    clusters: dict[int, bytes] = {}
    for i in range(l1_size):
        (l2,) = struct.unpack_from(">Q", image, l1_offset + i * 8)
        l2 &= (1 << 62) - 1
        if not l2:
            continue
        for j in range(CLUSTER // 8):
            (entry,) = struct.unpack_from(">Q", image, l2 + j * 8)
            entry &= (1 << 62) - 1
            if entry:
                clusters[i * (CLUSTER // 8) + j] = image[entry : entry + CLUSTER]
    return size, clusters


async def _image(layout: Qcow2Layout, volume: dict[int, bytes], piece: int = 300_000) -> bytes:
    async def read_guest(offset: int, length: int) -> bytes:
        index, within = divmod(offset, CLUSTER)
        return volume.get(index, bytes(CLUSTER))[within : within + length]

    out = b""
    while len(out) < layout.size:
        out += await layout.read(read_guest, len(out), piece)
    return out


@pytest.mark.parametrize("clusters", [[], [0], [1, 2, 3, 8192, 8193, 40000, 49151]])
async def test_qcow2_image_reads_back_the_volume(clusters: list[int], tmp_path: Path):
    size = 3 * GIB
    volume = {c: bytes([c % 251 + 1]) * CLUSTER for c in clusters}
    layout = Qcow2Layout.from_extents(size, [(c * CLUSTER, CLUSTER) for c in clusters])
    image = await _image(layout, volume)
    assert len(image) == layout.size
    assert parse_qcow2(image) == (size, volume)
    # Any range reads the same bytes as the whole.
    assert await layout.read(_no_read, 10, 100) == image[10:110]
    if shutil.which("qemu-img") is None:
        need_real("qemu-img is not installed")
    path = tmp_path / "disk.qcow2"
    path.write_bytes(image)
    check = _qemu_img_check(path)
    assert check.returncode == 0, check.stdout + check.stderr


def _qemu_img_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)


async def _no_read(offset: int, length: int) -> bytes:
    raise AssertionError("metadata reads need no volume data")


async def test_sim_extents_merge_runs_and_include_the_source():
    storage = SimStorageDriver(timings=FAST)
    await storage.ensure_volume(VolumeSpec("v", 2))
    await storage.write("v", 0, b"x" * (2 * CLUSTER))
    await storage.write("v", GIB + 5, b"y")
    assert await storage.allocated_extents("v") == [(0, 2 * CLUSTER), (GIB, CLUSTER)]
    await storage.ensure_volume(VolumeSpec("c", 2, source=("volume", "v")))
    await storage.write("c", 5 * CLUSTER, b"z")
    assert await storage.allocated_extents("c") == [
        (0, 2 * CLUSTER),
        (5 * CLUSTER, CLUSTER),
        (GIB, CLUSTER),
    ]


def _spec(vm_id: str, power: Literal["running", "stopped"]) -> VmSpec:
    return VmSpec(
        id=vm_id,
        name=vm_id,
        generation=1,
        vcpus=1,
        memory_mib=512,
        root_disk_gib=2,
        image_id="img-1",
        arch="x86_64",
        power_state=power,
    )


async def test_agent_pins_reads_and_drops_a_stopped_disk():
    storage = SimStorageDriver(timings=FAST)
    compute = SimComputeDriver(timings=FAST, storage=storage)
    exports = DiskExports(compute, storage)
    await compute.ensure_vm(_spec("vm-a", "stopped"))
    await compute.ensure_vm(_spec("vm-b", "running"))

    with pytest.raises(InvalidState, match="only a stopped VM"):
        await exports.begin({"vm_id": "vm-b", "export_id": "x-b"})
    with pytest.raises(NotSupported):
        await DiskExports(compute, None).begin({"vm_id": "vm-a", "export_id": "x-a"})

    pin = (await exports.begin({"vm_id": "vm-a", "export_id": "x-a"}))["export"]
    assert pin["virtual_size_bytes"] == 2 * GIB and pin["format"] == "qcow2"
    # The pin holds: the VM may boot (and write) while the image is read.
    await compute.ensure_vm(_spec("vm-a", "running"))
    assert (await exports.begin({"vm_id": "vm-a", "export_id": "x-a"}))["export"] == pin
    image = b""
    while len(image) < pin["size_bytes"]:
        reply = await exports.read({"export_id": "x-a", "offset": len(image), "length": 512 * 1024})
        image += base64.b64decode(reply["data"])
    size, clusters = parse_qcow2(image)
    assert size == 2 * GIB
    for index, data in clusters.items():
        assert data == await storage.read("x-a", index * CLUSTER, CLUSTER)
    assert await storage.read(root_volume_id("vm-a"), 0, 64) == clusters[0][:64]
    await exports.end({"export_id": "x-a"})
    assert await storage.get_volume("x-a") is None
    # Deleting the VM deletes its disk.
    await compute.delete_vm("vm-a")
    assert await storage.get_volume(root_volume_id("vm-a")) is None
