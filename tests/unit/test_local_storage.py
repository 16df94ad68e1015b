"""What only the ``local`` storage backend has to get right, beyond the shared contract.

Uploaded images are untrusted files QEMU opens on the host (backing files, data files),
VMDK uploads are converted, image bases are shared by thin volumes and kept hidden until
the last one goes, and no work file outlives its operation. Real ``qemu-img``/``qemu-io``
on small files in a temporary pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from altostack.drivers.errors import BackendFailure, InvalidSpec, InvalidState
from altostack.drivers.storage.base import GIB, VolumeSpec
from altostack.drivers.storage.local import LocalStorageDriver
from altostack.drivers.storage.local_upload import refuse_external_references
from tests.support.real import need_real

MIB = 1024**2
pytestmark = pytest.mark.real


def need_qemu_tools() -> None:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        need_real("qemu-img/qemu-io not installed (qemu-utils)")


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Path]:
    need_qemu_tools()
    root = tmp_path / "pool"
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _file_chunks(path: Path, chunk: int = 65536) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(chunk):
            yield block


def _run(*argv: str) -> None:
    """Test setup with the tools themselves (quick: blocking is fine in a test)."""
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _qemu_img(*args: str) -> None:
    _run("qemu-img", *args)


def _leftovers(pool: Path) -> list[str]:
    return sorted(p.name for p in (pool / "tmp").iterdir())


# -- untrusted uploads -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["backing file", "data file"])
async def test_an_image_reading_a_host_file_is_refused(
    pool: Path, tmp_path: Path, kind: str
) -> None:
    evil = tmp_path / "evil.qcow2"
    if kind == "backing file":
        _qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(evil), "1M")
    else:
        _qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}", str(evil), "1M")
    driver = LocalStorageDriver(pool)
    with pytest.raises(InvalidSpec, match=f"refused: it declares an? (external )?{kind}"):
        await driver.import_image("img-evil", _file_chunks(evil))
    assert await driver.list_images() == []
    assert _leftovers(pool) == [] and list((pool / "bases").iterdir()) == []


def test_an_encrypted_image_is_refused(tmp_path: Path) -> None:
    # What qemu-img info says of a LUKS-encrypted qcow2 (making one costs seconds of PBKDF)
    encrypted = {"format-specific": {"type": "qcow2", "data": {"encrypt": {"format": "luks"}}}}
    with pytest.raises(InvalidSpec, match="encrypted"):
        refuse_external_references(encrypted, tmp_path / "upload")


def test_a_vmdk_extent_outside_the_upload_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    own = {"format-specific": {"type": "vmdk", "data": {"extents": [{"filename": str(upload)}]}}}
    refuse_external_references(own, upload)  # its own file: fine
    other = {"format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/dev/sda"}]}}}
    with pytest.raises(InvalidSpec, match="extent '/dev/sda' is outside"):
        refuse_external_references(other, upload)


async def test_an_unreadable_qcow2_is_recorded_but_makes_no_volume(pool: Path) -> None:
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + GIB.to_bytes(8, "big")
    data = header + bytes(4096 - len(header))

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    driver = LocalStorageDriver(pool)
    info = await driver.import_image("img-broken", chunks())
    assert (info.format, info.virtual_size_bytes) == ("qcow2", GIB)
    with pytest.raises(InvalidSpec, match=r"cannot be used: .*cluster size"):
        await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-broken")))
    assert await driver.list_volumes() == [] and _leftovers(pool) == []


# -- formats -------------------------------------------------------------------------------


async def test_a_vmdk_is_imported_as_uploaded_and_used_as_qcow2(pool: Path, tmp_path: Path) -> None:
    content = os.urandom(2 * MIB)
    raw, vmdk = tmp_path / "disk.raw", tmp_path / "disk.vmdk"
    raw.write_bytes(content)
    _qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk))
    driver = LocalStorageDriver(pool)
    upload_sha = _sha(vmdk.read_bytes())
    info = await driver.import_image("img-vmdk", _file_chunks(vmdk), expected_sha256=upload_sha)
    assert (info.format, info.virtual_size_bytes) == ("vmdk", len(content))
    assert (info.size_bytes, info.sha256) == (vmdk.stat().st_size, upload_sha)
    assert [p.suffix for p in (pool / "bases").iterdir()] == [".qcow2"]
    vol = await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-vmdk")))
    assert vol.backing is not None and vol.backing.endswith(".qcow2")
    assert vol.allocated_bytes < MIB  # thin: the data stays in the base
    assert await driver.read("disk-1", 0, len(content)) == content


async def test_a_qcow2_image_gives_thin_volumes(pool: Path, tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    _qemu_img("create", "-f", "qcow2", str(image), "64M")
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(image))
    driver = LocalStorageDriver(pool)
    info = await driver.import_image("img-q", _file_chunks(image))
    assert (info.format, info.virtual_size_bytes) == ("qcow2", 64 * MIB)
    await driver.ensure_volume(VolumeSpec("disk-1", 2, ("image", "img-q")))
    assert await driver.read("disk-1", MIB, 65536) == b"\x5a" * 65536
    assert (await driver.get_volume("disk-1")).size_gib == 2  # type: ignore[union-attr]


# -- shared bases --------------------------------------------------------------------------


async def test_image_bases_stay_hidden_until_the_last_volume_goes(pool: Path) -> None:
    content = os.urandom(MIB)

    async def chunks() -> AsyncIterator[bytes]:
        yield content

    driver = LocalStorageDriver(pool)
    await driver.import_image("img-1", chunks())
    await driver.ensure_volume(VolumeSpec("disk-root", 1, ("image", "img-1")))
    await driver.write("disk-root", 4096, b"root data")
    snap = await driver.create_snapshot("disk-root", "snap-1")
    await driver.write("disk-root", 4096, b"overwrite")
    # a clone and a volume from a snapshot of an image-backed volume stay thin on the base
    clone = await driver.ensure_volume(VolumeSpec("disk-clone", 1, ("volume", "disk-root")))
    from_snap = await driver.ensure_volume(VolumeSpec("disk-snap", 1, ("snapshot", snap.id)))
    root = await driver.get_volume("disk-root")
    assert root is not None and clone.backing == from_snap.backing == root.backing
    await driver.delete_image("img-1")
    await driver.delete_volume("disk-root", force=True)
    assert len(list((pool / "bases").iterdir())) == 1  # still used by the copies
    assert await driver.read("disk-clone", 0, 4096 + 9) == content[:4096] + b"overwrite"
    assert await driver.read("disk-snap", 0, 4096 + 9) == content[:4096] + b"root data"
    assert await driver.read("disk-snap", MIB - 16, 16) == content[-16:]
    await LocalStorageDriver(pool).delete_volume("disk-clone")  # any instance: no memory
    assert len(list((pool / "bases").iterdir())) == 1
    await driver.delete_volume("disk-snap")
    assert list((pool / "bases").iterdir()) == []
    assert (await driver.pool_info()).provisioned_bytes == 0


async def test_the_same_content_under_two_ids_is_stored_once(pool: Path) -> None:
    content = os.urandom(MIB)

    async def chunks() -> AsyncIterator[bytes]:
        yield content

    driver = LocalStorageDriver(pool)
    await driver.import_image("img-a", chunks())
    await driver.import_image("img-b", chunks())
    assert len(list((pool / "bases").iterdir())) == 1
    await driver.delete_image("img-a")
    await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-b")))
    assert await driver.read("disk-1", 0, 64) == content[:64]


# -- work files ----------------------------------------------------------------------------


async def test_no_work_file_outlives_its_operation(pool: Path) -> None:
    driver = LocalStorageDriver(pool)
    await driver.ensure_volume(VolumeSpec("disk-1", 1))
    await driver.write("disk-1", 10, b"abc")
    assert await driver.read("disk-1", 10, 3) == b"abc"
    stream = await driver.export_volume("disk-1")
    assert _leftovers(pool) == []  # the pinned copy is already unlinked, held open
    total = 0
    async for chunk in stream:
        total += len(chunk)
    assert total == GIB
    driver.faults.inject("create_volume", resource_id="disk-2")
    with pytest.raises(BackendFailure, match="injected"):
        await driver.ensure_volume(VolumeSpec("disk-2", 1, ("volume", "disk-1")))
    with pytest.raises(BackendFailure, match="checksum"):
        await driver.import_image("img-1", _bytes(b"x" * 1000), expected_sha256="0" * 64)
    assert _leftovers(pool) == []
    assert [v.id for v in await driver.list_volumes()] == ["disk-1"]


async def test_a_cancelled_copy_leaves_nothing(pool: Path) -> None:
    driver = LocalStorageDriver(pool)
    await driver.ensure_volume(VolumeSpec("disk-1", 1))
    task = asyncio.create_task(driver.ensure_volume(VolumeSpec("disk-2", 1, ("volume", "disk-1"))))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [v.id for v in await driver.list_volumes()] == ["disk-1"]
    assert _leftovers(pool) == []


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_volume_held_by_a_running_qemu_is_in_use(pool: Path) -> None:
    driver = LocalStorageDriver(pool)
    await driver.ensure_volume(VolumeSpec("disk-1", 1))
    # qemu-io waiting for commands holds the image open for writing, as a VM's QEMU does
    holder = await asyncio.create_subprocess_exec(
        "qemu-io", "-f", "qcow2", str(pool / "volumes" / "disk-1.qcow2"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        prompt = await asyncio.wait_for(holder.stdout.readuntil(b"qemu-io> "), 10)
        assert prompt.endswith(b"qemu-io> ")  # the image is open: its locks are held
        with pytest.raises(InvalidState) as exc:
            await driver.write("disk-1", 0, b"x")
        assert exc.value.current_state == "in use" and "lock" in exc.value.message
        for call in (
            driver.delete_volume("disk-1"),
            driver.resize_volume("disk-1", 2),
            driver.create_snapshot("disk-1", "snap-1"),
            driver.read("disk-1", 0, 1),
        ):
            with pytest.raises(InvalidState, match="lock"):
                await call
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()
    await driver.write("disk-1", 0, b"y")
    assert await driver.read("disk-1", 0, 1) == b"y"


async def test_a_vm_disk_chain_becomes_a_new_image(pool: Path, tmp_path: Path) -> None:
    base, root = tmp_path / "base.qcow2", tmp_path / "root.qcow2"
    _qemu_img("create", "-f", "qcow2", str(base), "32M")
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(base))
    _qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(root), "1G")
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 64k 64k", str(root))
    driver = LocalStorageDriver(pool)
    info = await driver.import_disk("img-snap", root)
    assert (info.format, info.virtual_size_bytes) == ("qcow2", GIB)
    base_file, fmt = await driver.base_file("img-snap")
    assert fmt == "qcow2" and base_file.parent == pool / "bases"
    base.unlink()  # the new image is standalone
    await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-snap")))
    assert await driver.read("disk-1", 0, 128 * 1024) == b"\x11" * 65536 + b"\x22" * 65536
    assert _leftovers(pool) == []


async def test_a_pool_path_with_spaces_and_commas_works(pool: Path) -> None:
    driver = LocalStorageDriver(pool.parent / "my pool, really")
    await driver.ensure_volume(VolumeSpec("disk-1", 1))
    await driver.write("disk-1", 7, b"odd path")
    await driver.create_snapshot("disk-1", "snap-1")
    await driver.write("disk-1", 7, b"changed!")
    await driver.rollback("disk-1", "snap-1")
    assert await driver.read("disk-1", 7, 8) == b"odd path"


async def test_creates_from_each_other_do_not_deadlock(pool: Path) -> None:
    driver = LocalStorageDriver(pool)
    a = driver.ensure_volume(VolumeSpec("disk-a", 1, ("volume", "disk-b")))
    b = driver.ensure_volume(VolumeSpec("disk-b", 1, ("volume", "disk-a")))
    results = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 10)
    assert [type(r).__name__ for r in results] == ["VolumeNotFound", "VolumeNotFound"]


async def test_zeros_in_an_upload_take_no_space(pool: Path) -> None:
    data = os.urandom(MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield bytes(MIB)
        yield data
        yield bytes(MIB)  # a trailing hole

    driver = LocalStorageDriver(pool)
    info = await driver.import_image("img-sparse", chunks())
    assert info.size_bytes == info.virtual_size_bytes == 10 * MIB
    (base,) = (pool / "bases").iterdir()
    assert base.stat().st_size == 10 * MIB and base.stat().st_blocks * 512 < 2 * MIB
    await driver.ensure_volume(VolumeSpec("disk-1", 1, ("image", "img-sparse")))
    assert await driver.read("disk-1", 8 * MIB - 1, MIB + 2) == b"\0" + data + b"\0"
