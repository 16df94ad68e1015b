"""The storage driver contract: one test per promise in ``drivers/storage/base.py``.

Data is checked by content: bytes are written, snapshotted, overwritten, rolled back,
cloned and exported, and what reads back is compared by sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable

import pytest

from altostack.domain.ids import new_id
from altostack.drivers.errors import (
    BackendFailure,
    ImageNotFound,
    InvalidSpec,
    InvalidState,
    SnapshotNotFound,
    VolumeNotFound,
)
from altostack.drivers.storage.base import GIB, VolumeSpec
from tests.contract.conftest import StorageHarness

MIB = 1024**2
OFFSETS = (0, 3 * MIB + 17, GIB - 4096)
"""Where tests write: the start, an unaligned middle, the last page of a 1 GiB volume."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _stream(data: bytes, chunk: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def _volume(storage: StorageHarness, size_gib: int = 1, **kw: object) -> str:
    vol_id = new_id("disk")
    await storage.driver.ensure_volume(VolumeSpec(vol_id, size_gib, **kw))  # type: ignore[arg-type]
    return vol_id


async def _fill(storage: StorageHarness, vol_id: str, seed: bytes) -> dict[int, bytes]:
    """Write 4 KiB of distinct data at each of OFFSETS; returns what was written where."""
    written = {}
    for n, offset in enumerate(OFFSETS):
        data = hashlib.sha512(seed + bytes([n])).digest() * 64  # 4 KiB
        await storage.driver.write(vol_id, offset, data)
        written[offset] = data
    return written


async def _checksums(storage: StorageHarness, vol_id: str, offsets: Iterable[int]) -> list[str]:
    return [_sha(await storage.driver.read(vol_id, off, 4096)) for off in offsets]


def _expected(written: dict[int, bytes]) -> list[str]:
    return [_sha(written[off]) for off in OFFSETS]


# -- volumes ---------------------------------------------------------------------------------


async def test_a_blank_volume_reads_as_zeros(storage: StorageHarness) -> None:
    vol_id = await _volume(storage, 2)
    info = await storage.driver.get_volume(vol_id)
    assert info is not None and (info.size_gib, info.backing) == (2, None)
    for offset in (0, GIB + 123, 2 * GIB - 512):
        assert await storage.driver.read(vol_id, offset, 512) == bytes(512)


async def test_ensure_volume_is_idempotent(storage: StorageHarness) -> None:
    spec = VolumeSpec(new_id("disk"), 1)
    first = await storage.driver.ensure_volume(spec)
    await storage.driver.write(spec.id, 0, b"kept")
    again = await storage.driver.ensure_volume(spec)
    assert again.id == first.id and again.size_gib == 1
    assert await storage.driver.read(spec.id, 0, 4) == b"kept"
    assert [v.id for v in await storage.driver.list_volumes()] == [spec.id]


async def test_concurrent_ensures_make_one_volume(storage: StorageHarness) -> None:
    spec = VolumeSpec(new_id("disk"), 1)
    await asyncio.gather(*(storage.driver.ensure_volume(spec) for _ in range(5)))
    assert [v.id for v in await storage.driver.list_volumes()] == [spec.id]


async def test_ensure_volume_grows_but_never_shrinks(storage: StorageHarness) -> None:
    vol_id = await _volume(storage, 2)
    written = await _fill(storage, vol_id, b"grow")
    assert (await storage.driver.ensure_volume(VolumeSpec(vol_id, 3))).size_gib == 3
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(written)
    with pytest.raises(InvalidState) as exc:
        await storage.driver.ensure_volume(VolumeSpec(vol_id, 1))
    assert "3" in exc.value.current_state


async def test_get_volume_of_a_missing_volume_is_none(storage: StorageHarness) -> None:
    assert await storage.driver.get_volume("disk-missing") is None


async def test_write_then_read_round_trips(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    written = await _fill(storage, vol_id, b"round trip")
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(written)
    # a read spanning written and unwritten bytes
    assert await storage.driver.read(vol_id, 4090, 12) == written[0][4090:] + bytes(6)


async def test_io_outside_the_volume_is_refused(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    with pytest.raises(InvalidSpec):
        await storage.driver.read(vol_id, GIB - 10, 20)
    with pytest.raises(InvalidSpec):
        await storage.driver.write(vol_id, GIB, b"x")


async def test_resize_grows_and_keeps_the_data(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    written = await _fill(storage, vol_id, b"resize")
    info = await storage.driver.resize_volume(vol_id, 4)
    assert info.size_gib == 4
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(written)
    assert await storage.driver.read(vol_id, 3 * GIB, 4096) == bytes(4096)
    await storage.driver.write(vol_id, 4 * GIB - 4, b"tail")
    assert await storage.driver.read(vol_id, 4 * GIB - 4, 4) == b"tail"


async def test_resize_never_shrinks(storage: StorageHarness) -> None:
    vol_id = await _volume(storage, 2)
    with pytest.raises(InvalidState) as exc:
        await storage.driver.resize_volume(vol_id, 1)
    assert "2" in exc.value.current_state and "2" in str(exc.value)
    assert (await storage.driver.resize_volume(vol_id, 2)).size_gib == 2  # same size: no-op


async def test_delete_volume_frees_it_and_missing_deletes_succeed(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    await storage.driver.write(vol_id, 0, os.urandom(MIB))
    used = (await storage.driver.pool_info()).allocated_bytes
    await storage.driver.delete_volume(vol_id)
    assert await storage.driver.get_volume(vol_id) is None
    assert (await storage.driver.pool_info()).allocated_bytes < used
    await storage.driver.delete_volume(vol_id)
    await storage.driver.delete_volume("disk-missing")


async def test_a_failed_create_leaves_no_volume(storage: StorageHarness) -> None:
    spec = VolumeSpec(new_id("disk"), 1)
    storage.faults.inject("create_volume", resource_id=spec.id)
    with pytest.raises(BackendFailure, match="injected"):
        await storage.driver.ensure_volume(spec)
    assert await storage.driver.list_volumes() == []
    assert (await storage.driver.ensure_volume(spec)).id == spec.id


async def test_missing_sources_raise_typed_not_found(storage: StorageHarness) -> None:
    cases = [
        (("image", "img-missing"), ImageNotFound),
        (("snapshot", "snap-missing"), SnapshotNotFound),
        (("volume", "disk-missing"), VolumeNotFound),
    ]
    for source, error in cases:
        with pytest.raises(error):
            await storage.driver.ensure_volume(VolumeSpec(new_id("disk"), 1, source))  # type: ignore[arg-type]
    assert await storage.driver.list_volumes() == []


async def test_every_operation_on_a_missing_volume_raises_volume_not_found(
    storage: StorageHarness,
) -> None:
    d, missing = storage.driver, "disk-missing"
    calls = [
        d.resize_volume(missing, 2),
        d.read(missing, 0, 1),
        d.write(missing, 0, b"x"),
        d.create_snapshot(missing, new_id("snap")),
        d.rollback(missing, "snap-missing"),
        d.export_volume(missing),
    ]
    for call in calls:
        with pytest.raises(VolumeNotFound):
            await call


async def test_an_agent_restart_keeps_everything(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    written = await _fill(storage, vol_id, b"restart")
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    await storage.restart()
    assert [v.id for v in await storage.driver.list_volumes()] == [vol_id]
    assert [s.id for s in await storage.driver.list_snapshots(vol_id)] == [snap.id]
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(written)


# -- snapshots ------------------------------------------------------------------------------


async def test_snapshot_overwrite_rollback_restores_the_data(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    original = await _fill(storage, vol_id, b"original")
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    assert (snap.volume_id, snap.size_gib) == (vol_id, 1)
    changed = await _fill(storage, vol_id, b"changed")
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(changed)
    await storage.driver.rollback(vol_id, snap.id)
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(original)
    # the snapshot survives its rollback: change and roll back again
    await _fill(storage, vol_id, b"again")
    await storage.driver.rollback(vol_id, snap.id)
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(original)


async def test_rollback_forgets_writes_to_never_written_areas(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    await storage.driver.write(vol_id, 5 * MIB, b"later")
    await storage.driver.rollback(vol_id, snap.id)
    assert await storage.driver.read(vol_id, 5 * MIB, 5) == bytes(5)


async def test_rollback_restores_the_size(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    original = await _fill(storage, vol_id, b"size")
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    await storage.driver.resize_volume(vol_id, 2)
    info = await storage.driver.rollback(vol_id, snap.id)
    assert info.size_gib == 1
    assert await _checksums(storage, vol_id, OFFSETS) == _expected(original)


async def test_snapshots_are_idempotent_and_listed(storage: StorageHarness) -> None:
    vol_id, other = await _volume(storage), await _volume(storage)
    snap_id = new_id("snap")
    first = await storage.driver.create_snapshot(vol_id, snap_id)
    assert await storage.driver.create_snapshot(vol_id, snap_id) == first
    with pytest.raises(InvalidSpec):
        await storage.driver.create_snapshot(other, snap_id)
    assert await storage.driver.list_snapshots(vol_id) == [first]
    assert await storage.driver.list_snapshots(other) == []
    assert await storage.driver.list_snapshots() == [first]


async def test_rollback_needs_an_existing_snapshot_of_that_volume(
    storage: StorageHarness,
) -> None:
    vol_id, other = await _volume(storage), await _volume(storage)
    with pytest.raises(SnapshotNotFound):
        await storage.driver.rollback(vol_id, "snap-missing")
    snap = await storage.driver.create_snapshot(other, new_id("snap"))
    with pytest.raises(InvalidSpec):
        await storage.driver.rollback(vol_id, snap.id)


async def test_delete_snapshot_and_missing_deletes_succeed(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    await storage.driver.delete_snapshot(snap.id)
    await storage.driver.delete_snapshot(snap.id)
    await storage.driver.delete_snapshot("snap-missing")
    assert await storage.driver.list_snapshots() == []


async def test_delete_volume_with_snapshots_needs_force(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    snap = await storage.driver.create_snapshot(vol_id, new_id("snap"))
    with pytest.raises(InvalidState) as exc:
        await storage.driver.delete_volume(vol_id)
    assert snap.id in str(exc.value)
    assert await storage.driver.get_volume(vol_id) is not None
    await storage.driver.delete_volume(vol_id, force=True)
    assert await storage.driver.get_volume(vol_id) is None
    assert await storage.driver.list_snapshots() == []


async def test_parallel_snapshots_and_clones_stay_consistent(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    written = await _fill(storage, vol_id, b"parallel")
    snap_ids = [new_id("snap") for _ in range(10)]
    clone_ids = [new_id("disk") for _ in range(10)]
    await asyncio.gather(
        *(storage.driver.create_snapshot(vol_id, s) for s in snap_ids),
        *(storage.driver.ensure_volume(VolumeSpec(c, 1, ("volume", vol_id))) for c in clone_ids),
    )
    assert sorted(s.id for s in await storage.driver.list_snapshots(vol_id)) == sorted(snap_ids)
    for clone_id in clone_ids:
        assert await _checksums(storage, clone_id, OFFSETS) == _expected(written)
    for snap_id in snap_ids:
        from_snap = await _volume(storage, source=("snapshot", snap_id))
        assert await _checksums(storage, from_snap, OFFSETS) == _expected(written)


# -- clones ---------------------------------------------------------------------------------


async def test_a_clone_sees_the_source_and_is_independent(storage: StorageHarness) -> None:
    source = await _volume(storage)
    original = await _fill(storage, source, b"source")
    clone = await _volume(storage, 2, source=("volume", source))
    assert await _checksums(storage, clone, OFFSETS) == _expected(original)
    source_changes = await _fill(storage, source, b"source changed")
    assert await _checksums(storage, clone, OFFSETS) == _expected(original)
    clone_changes = await _fill(storage, clone, b"clone changed")
    assert await _checksums(storage, source, OFFSETS) == _expected(source_changes)
    assert await _checksums(storage, clone, OFFSETS) == _expected(clone_changes)


async def test_a_clone_outlives_its_source(storage: StorageHarness) -> None:
    source = await _volume(storage)
    original = await _fill(storage, source, b"outlive")
    clone = await _volume(storage, source=("volume", source))
    await storage.driver.delete_volume(source)
    assert await _checksums(storage, clone, OFFSETS) == _expected(original)


async def test_a_volume_from_a_snapshot_outlives_both(storage: StorageHarness) -> None:
    source = await _volume(storage)
    original = await _fill(storage, source, b"from snapshot")
    snap = await storage.driver.create_snapshot(source, new_id("snap"))
    await _fill(storage, source, b"after the snapshot")
    restored = await _volume(storage, source=("snapshot", snap.id))
    await storage.driver.delete_snapshot(snap.id)
    await storage.driver.delete_volume(source)
    assert await _checksums(storage, restored, OFFSETS) == _expected(original)


async def test_a_volume_smaller_than_its_source_is_refused(storage: StorageHarness) -> None:
    source = await _volume(storage, 2)
    spec = VolumeSpec(new_id("disk"), 1, ("volume", source))
    with pytest.raises(InvalidSpec):
        await storage.driver.ensure_volume(spec)
    assert await storage.driver.get_volume(spec.id) is None


# -- images ---------------------------------------------------------------------------------


async def test_import_a_raw_image_and_boot_a_volume_from_it(storage: StorageHarness) -> None:
    data = os.urandom(3 * MIB + 1234)
    image_id = new_id("img")
    info = await storage.driver.import_image(image_id, _stream(data), expected_sha256=_sha(data))
    assert (info.id, info.format, info.sha256) == (image_id, "raw", _sha(data))
    assert info.size_bytes == info.virtual_size_bytes == len(data)
    assert await storage.driver.list_images() == [info]
    vol_id = await _volume(storage, source=("image", image_id))
    assert _sha(await storage.driver.read(vol_id, 0, len(data))) == _sha(data)
    assert await storage.driver.read(vol_id, len(data), 100) == bytes(100)
    await storage.driver.write(vol_id, 0, b"changed")  # the image does not change
    other = await _volume(storage, source=("image", image_id))
    assert _sha(await storage.driver.read(other, 0, len(data))) == _sha(data)


async def test_import_detects_qcow2(storage: StorageHarness) -> None:
    virtual = 2 * GIB
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + virtual.to_bytes(8, "big")
    data = header + bytes(4096 - len(header))
    info = await storage.driver.import_image(new_id("img"), _stream(data))
    assert (info.format, info.virtual_size_bytes, info.size_bytes) == ("qcow2", virtual, 4096)
    with pytest.raises(InvalidSpec):  # a 1 GiB disk cannot hold a 2 GiB image
        await storage.driver.ensure_volume(VolumeSpec(new_id("disk"), 1, ("image", info.id)))


async def test_import_with_a_wrong_checksum_leaves_nothing(storage: StorageHarness) -> None:
    data = os.urandom(MIB)
    image_id = new_id("img")
    before = (await storage.driver.pool_info()).allocated_bytes
    with pytest.raises(BackendFailure, match="checksum"):
        await storage.driver.import_image(image_id, _stream(data), expected_sha256="0" * 64)
    assert await storage.driver.list_images() == []
    assert (await storage.driver.pool_info()).allocated_bytes == before
    info = await storage.driver.import_image(image_id, _stream(data), expected_sha256=_sha(data))
    assert info.sha256 == _sha(data)


async def test_a_failing_stream_leaves_nothing(storage: StorageHarness) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise ConnectionResetError("upload interrupted")

    with pytest.raises(ConnectionResetError):
        await storage.driver.import_image(new_id("img"), broken())
    assert await storage.driver.list_images() == []


async def test_import_is_idempotent_and_images_are_immutable(storage: StorageHarness) -> None:
    data = os.urandom(10_000)
    image_id = new_id("img")
    first = await storage.driver.import_image(image_id, _stream(data))
    assert await storage.driver.import_image(image_id, _stream(data)) == first
    assert (
        await storage.driver.import_image(image_id, _stream(b""), expected_sha256=first.sha256)
        == first
    )
    with pytest.raises(InvalidSpec):
        await storage.driver.import_image(image_id, _stream(os.urandom(10_000)))
    assert await storage.driver.list_images() == [first]


async def test_delete_image_keeps_volumes_made_from_it(storage: StorageHarness) -> None:
    data = os.urandom(MIB)
    image_id = new_id("img")
    await storage.driver.import_image(image_id, _stream(data))
    vol_id = await _volume(storage, source=("image", image_id))
    await storage.driver.delete_image(image_id)
    await storage.driver.delete_image(image_id)  # missing: fine
    assert await storage.driver.list_images() == []
    assert _sha(await storage.driver.read(vol_id, 0, len(data))) == _sha(data)


async def test_export_streams_the_whole_volume_as_of_the_call(storage: StorageHarness) -> None:
    vol_id = await _volume(storage)
    written = await _fill(storage, vol_id, b"export")
    stream = await storage.driver.export_volume(vol_id)
    await storage.driver.write(vol_id, 0, bytes(4096))  # after the call: not in the export
    size, found = 0, {offset: bytearray() for offset in OFFSETS}
    async for chunk in stream:  # 1 GiB: look at the written ranges only, hash nothing big
        end = size + len(chunk)
        for offset, got in found.items():
            lo, hi = max(offset, size), min(offset + 4096, end)
            if lo < hi:
                got += chunk[lo - size : hi - size]
        size = end
    assert size == GIB
    assert [_sha(bytes(found[offset])) for offset in OFFSETS] == _expected(written)


async def test_a_clone_retried_after_a_failure_copies_the_source_as_of_the_retry(
    storage: StorageHarness,
) -> None:
    source = await _volume(storage)
    await _fill(storage, source, b"first")
    spec = VolumeSpec(new_id("disk"), 1, ("volume", source))
    storage.faults.inject("create_volume", resource_id=spec.id)
    with pytest.raises(BackendFailure, match="injected"):
        await storage.driver.ensure_volume(spec)
    second = await _fill(storage, source, b"second")
    await storage.driver.ensure_volume(spec)
    assert await _checksums(storage, spec.id, OFFSETS) == _expected(second)


async def test_deleting_everything_in_any_order_frees_everything(storage: StorageHarness) -> None:
    """Parents deleted before their clones (hidden until unused) are freed with the last."""
    data = os.urandom(MIB)
    image_id = new_id("img")
    await storage.driver.import_image(image_id, _stream(data))
    root = await _volume(storage, source=("image", image_id))
    written = await _fill(storage, root, b"root")
    snap = await storage.driver.create_snapshot(root, new_id("snap"))
    from_snap = await _volume(storage, source=("snapshot", snap.id))
    clone = await _volume(storage, source=("volume", root))
    await storage.driver.delete_image(image_id)
    await storage.driver.delete_volume(root, force=True)
    assert await _checksums(storage, from_snap, OFFSETS) == _expected(written)
    assert await _checksums(storage, clone, OFFSETS) == _expected(written)
    for vol_id in (clone, from_snap):
        await storage.driver.delete_volume(vol_id)
    assert await storage.driver.list_volumes() == []
    assert await storage.driver.list_snapshots() == []
    assert await storage.driver.list_images() == []
    assert (await storage.driver.pool_info()).allocated_bytes == 0
