"""What the sim storage backend does beyond the contract: blocks, formats, space, timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from altostack.drivers.errors import InsufficientResources
from altostack.drivers.storage.base import GIB, VolumeSpec
from altostack.drivers.storage.blocks import BlockStore
from altostack.drivers.storage.formats import detect_format
from altostack.drivers.storage.sim import SimStorageConfig, SimStorageDriver, SimStoragePool
from altostack.drivers.timings import SimTimings

BS = 64 * 1024


async def _stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _driver(**config: int) -> SimStorageDriver:
    pool = SimStoragePool(SimStorageConfig(**config))
    return SimStorageDriver(pool, timings=SimTimings.instant())


# -- blocks ----------------------------------------------------------------------------------


def test_block_store_reads_and_writes_across_block_boundaries() -> None:
    store = BlockStore(16)
    store.write(10, b"abcdefghij")  # spans blocks 0 and 1
    assert store.read(8, 14) == b"\0\0abcdefghij\0\0"
    assert sorted(store.own) == [0, 1]
    store.write(16, b"X" * 16)  # a whole block
    assert store.read(10, 10) == b"abcdefXXXX"
    assert store.read(0, 0) == b""


def test_block_store_is_copy_on_write_over_its_parent() -> None:
    parent = BlockStore(16)
    parent.write(0, b"P" * 32)
    child = BlockStore(16, parent=parent.flatten())
    assert child.read(0, 32) == b"P" * 32 and child.own == {}
    assert child.blocks_to_allocate(0, 17) == 2
    child.write(0, b"c")
    parent.write(16, b"q" * 16)
    assert child.read(0, 32) == b"c" + b"P" * 31
    assert child.blocks_to_allocate(0, 17) == 1


def test_format_detection() -> None:
    qcow2 = b"QFI\xfb" + bytes(20) + (10 * GIB).to_bytes(8, "big")
    assert detect_format(qcow2, 1234) == ("qcow2", 10 * GIB)
    vmdk = b"KDMV" + bytes(8) + (2048).to_bytes(8, "little")
    assert detect_format(vmdk, 99) == ("vmdk", 2048 * 512)
    assert detect_format(b"QFI\xfb", 4) == ("raw", 4)  # too short to be a qcow2 header
    assert detect_format(b"\x00" * 512, 4096) == ("raw", 4096)


def test_block_size_must_divide_a_gib() -> None:
    with pytest.raises(ValueError):
        SimStorageConfig(block_size=3000)


# -- space -----------------------------------------------------------------------------------


async def test_clones_are_thin_and_name_their_backing() -> None:
    d = _driver()
    await d.ensure_volume(VolumeSpec("disk-a", 1))
    await d.write("disk-a", 0, b"x" * BS * 4)
    a = await d.get_volume("disk-a")
    assert a is not None and a.allocated_bytes == 4 * BS
    clone = await d.ensure_volume(VolumeSpec("disk-b", 1, ("volume", "disk-a")))
    assert (clone.allocated_bytes, clone.backing) == (0, "volume:disk-a")
    await d.write("disk-b", 0, b"y")
    b = await d.get_volume("disk-b")
    assert b is not None and b.allocated_bytes == BS
    pool = await d.pool_info()
    assert (pool.allocated_bytes, pool.provisioned_bytes) == (5 * BS, 2 * GIB)


async def test_a_full_pool_refuses_writes() -> None:
    d = SimStorageDriver(
        SimStoragePool(SimStorageConfig(capacity_gib=4 * BS / GIB)), timings=SimTimings.instant()
    )
    await d.ensure_volume(VolumeSpec("disk-a", 1))  # thin: provisioning may exceed capacity
    await d.write("disk-a", 0, b"a" * 3 * BS)
    await d.write("disk-a", GIB - 1, b"z")  # exactly full
    with pytest.raises(InsufficientResources, match="full"):
        await d.write("disk-a", 5 * BS, b"b")
    await d.write("disk-a", 0, b"rewrite")  # rewriting owned blocks needs no space
    assert (await d.pool_info()).allocated_bytes == 4 * BS


async def test_imports_stay_sparse() -> None:
    d = _driver()
    data = bytes(BS) * 8 + b"tail"
    info = await d.import_image("img-a", _stream(data[:1000], data[1000:]))
    assert info.size_bytes == len(data)
    assert (await d.pool_info()).allocated_bytes == BS  # only the non-zero tail block
    await d.ensure_volume(VolumeSpec("disk-a", 1, ("image", "img-a")))
    assert await d.read("disk-a", 8 * BS, 6) == b"tail\0\0"


async def test_a_volume_from_a_qcow2_image_reads_zeros() -> None:
    d = _driver()
    header = b"QFI\xfb" + bytes(20) + GIB.to_bytes(8, "big")
    await d.import_image("img-q", _stream(header + b"\xff" * 1000))
    await d.ensure_volume(VolumeSpec("disk-q", 1, ("image", "img-q")))
    assert await d.read("disk-q", 0, 64) == bytes(64)


async def test_rollback_and_delete_account_space() -> None:
    d = _driver()
    await d.ensure_volume(VolumeSpec("disk-a", 1))
    snap = await d.create_snapshot("disk-a", "snap-1")
    await d.write("disk-a", 0, b"w" * 3 * BS)
    assert (await d.pool_info()).allocated_bytes == 3 * BS
    await d.rollback("disk-a", snap.id)
    assert (await d.pool_info()).allocated_bytes == 0
    await d.write("disk-a", 0, b"w")
    await d.delete_volume("disk-a", force=True)
    assert (await d.pool_info()).allocated_bytes == 0


# -- timing and failure ------------------------------------------------------------------------


async def test_operations_take_their_configured_time() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    d = SimStorageDriver(sleep=sleep)
    await d.ensure_volume(VolumeSpec("disk-a", 1))
    await d.ensure_volume(VolumeSpec("disk-b", 1, ("volume", "disk-a")))
    await d.create_snapshot("disk-a", "snap-1")
    await d.rollback("disk-a", "snap-1")
    await d.resize_volume("disk-a", 2)
    await d.import_image("img-1", _stream(b"data"))
    t = SimTimings()
    assert delays == [
        t.create_volume,
        t.clone_volume,
        t.create_snapshot,
        t.rollback,
        t.resize_volume,
        t.import_image,
    ]


async def test_a_failed_rollback_keeps_the_current_data() -> None:
    d = _driver()
    await d.ensure_volume(VolumeSpec("disk-a", 1))
    await d.create_snapshot("disk-a", "snap-1")
    await d.write("disk-a", 0, b"current")
    d.faults.inject("rollback", resource_id="disk-a")
    with pytest.raises(Exception, match="injected"):
        await d.rollback("disk-a", "snap-1")
    assert await d.read("disk-a", 0, 7) == b"current"


async def test_a_cancelled_clone_leaves_nothing() -> None:
    gate = asyncio.Event()

    async def slow(seconds: float) -> None:
        await gate.wait()

    d = SimStorageDriver(sleep=slow)
    task = asyncio.create_task(d.ensure_volume(VolumeSpec("disk-a", 1)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await d.list_volumes() == []


def test_volume_specs_are_validated() -> None:
    with pytest.raises(ValueError):
        VolumeSpec("disk-a", 0)
    with pytest.raises(ValueError):
        VolumeSpec("disk-a", 1, ("backup", "b-1"))  # type: ignore[arg-type]
