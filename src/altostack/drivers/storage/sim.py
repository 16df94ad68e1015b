"""The ``sim`` storage backend: real bytes in memory, sparse and copy-on-write.

Data is kept for real (see :mod:`altostack.drivers.storage.blocks`), so the contract
suite's data checks (write, snapshot, overwrite, roll back, compare checksums) mean the
same thing here as on qcow2 files or Ceph. Clones and snapshots pin their source's blocks
at creation, so they are independent of later writes and survive the source's deletion.
Only raw images are decoded: a volume made from a qcow2 or VMDK image reads as zeros.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from altostack.drivers.errors import BackendFailure, InvalidSpec, InvalidState
from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage.base import (
    GIB,
    AttachTarget,
    Extent,
    ImageInfo,
    PoolInfo,
    SnapshotInfo,
    StorageCapabilities,
    StorageDriver,
    VolumeInfo,
    VolumeSpec,
)
from altostack.drivers.storage.blocks import EMPTY, BlockStore, blocks_from_stream_buffer
from altostack.drivers.storage.formats import HEADER_BYTES, detect_format
from altostack.drivers.storage.sim_pool import (
    SimImage,
    SimSnapshot,
    SimStorageConfig,
    SimStoragePool,
    SimVolume,
    snapshot_info,
)
from altostack.drivers.timings import SimTimings

__all__ = ["SIM_STORAGE_CAPABILITIES", "SimStorageConfig", "SimStorageDriver", "SimStoragePool"]

SIM_STORAGE_CAPABILITIES = StorageCapabilities(
    thin_clones=True, online_resize=True, live_snapshots=True, shared=False
)

Sleep = Callable[[float], Awaitable[None]]


class SimStorageDriver(StorageDriver):
    """A storage driver over a :class:`SimStoragePool` (a new one unless given)."""

    def __init__(
        self,
        pool: SimStoragePool | None = None,
        *,
        timings: SimTimings | None = None,
        faults: FaultInjector | None = None,
        capabilities: StorageCapabilities = SIM_STORAGE_CAPABILITIES,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pool = pool or SimStoragePool()
        self.timings = timings or SimTimings()
        self.faults = faults or FaultInjector()
        self._capabilities = capabilities
        self._sleep = sleep

    @property
    def capabilities(self) -> StorageCapabilities:
        return self._capabilities

    async def pool_info(self) -> PoolInfo:
        return self.pool.pool_info()

    # -- volumes ---------------------------------------------------------------------------

    async def ensure_volume(self, spec: VolumeSpec) -> VolumeInfo:
        async with self.pool.lock(f"vol:{spec.id}"):
            existing = self.pool.volumes.get(spec.id)
            if existing is not None:
                if spec.size_gib != existing.size_gib:
                    await self._grow(existing, spec.size_gib)
                return self.pool.volume_info(existing)
            parent, backing, min_gib = self._pin_source(spec)
            if spec.size_gib < min_gib:
                raise InvalidSpec(
                    f"volume {spec.id} of {spec.size_gib} GiB is smaller than its source "
                    f"{backing} ({min_gib} GiB)"
                )
            delay = self.timings.clone_volume if spec.source else self.timings.create_volume
            await self._work("create_volume", delay, spec.id)
            data = BlockStore(self.pool.config.block_size, parent=parent)
            vol = SimVolume(spec.id, spec.size_gib, data, backing)
            self.pool.volumes[spec.id] = vol
            return self.pool.volume_info(vol)

    def _pin_source(self, spec: VolumeSpec) -> tuple[Mapping[int, bytes], str | None, int]:
        """The source's data as of now, its name, and the smallest volume that holds it."""
        if spec.source is None:
            return EMPTY, None, 1
        kind, source_id = spec.source
        if kind == "image":
            image = self.pool.image(source_id)
            min_gib = max(1, math.ceil(image.info.virtual_size_bytes / GIB))
            return image.blocks, f"image:{source_id}", min_gib
        if kind == "snapshot":
            snap = self.pool.snapshot(source_id)
            return {**snap.parent, **snap.own}, f"snapshot:{source_id}", snap.size_gib
        vol = self.pool.volume(source_id)
        return vol.data.flatten(), f"volume:{source_id}", vol.size_gib

    async def get_volume(self, volume_id: str) -> VolumeInfo | None:
        vol = self.pool.volumes.get(volume_id)
        return None if vol is None else self.pool.volume_info(vol)

    async def list_volumes(self) -> list[VolumeInfo]:
        return [self.pool.volume_info(v) for _, v in sorted(self.pool.volumes.items())]

    async def delete_volume(self, volume_id: str, *, force: bool = False) -> None:
        async with self.pool.lock(f"vol:{volume_id}"):
            vol = self.pool.volumes.get(volume_id)
            if vol is None:
                return
            snaps = sorted(s.id for s in self.pool.snapshots.values() if s.volume_id == volume_id)
            if snaps and not force:
                raise InvalidState(
                    "snapshotted",
                    "without snapshots",
                    resource_id=volume_id,
                    message=f"volume {volume_id} has {len(snaps)} snapshot(s) "
                    f"({', '.join(snaps)}); delete them first or force the delete",
                )
            await self._work("delete_volume", self.timings.delete_volume, volume_id)
            for snap_id in snaps:
                del self.pool.snapshots[snap_id]
            del self.pool.volumes[volume_id]
            self.pool.release_blocks(len(vol.data.own))

    async def resize_volume(self, volume_id: str, size_gib: int) -> VolumeInfo:
        async with self.pool.lock(f"vol:{volume_id}"):
            vol = self.pool.volume(volume_id)
            if size_gib != vol.size_gib:
                await self._grow(vol, size_gib)
            return self.pool.volume_info(vol)

    async def _grow(self, vol: SimVolume, size_gib: int) -> None:
        if size_gib < vol.size_gib:
            raise InvalidState(
                f"{vol.size_gib} GiB",
                f"at most {size_gib} GiB",
                resource_id=vol.id,
                message=f"volume {vol.id} is {vol.size_gib} GiB; volumes only grow, "
                f"not to {size_gib} GiB",
            )
        await self._work("resize_volume", self.timings.resize_volume, vol.id)
        vol.size_gib = size_gib

    # -- data ------------------------------------------------------------------------------

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        vol = self._in_bounds(volume_id, offset, length)
        self.faults.check("read", volume_id)
        return vol.data.read(offset, length)

    async def write(self, volume_id: str, offset: int, data: bytes) -> None:
        vol = self._in_bounds(volume_id, offset, len(data))
        self.faults.check("write", volume_id)
        self.pool.reserve_blocks(vol.data.blocks_to_allocate(offset, len(data)))
        vol.data.write(offset, data)

    def _in_bounds(self, volume_id: str, offset: int, length: int) -> SimVolume:
        vol = self.pool.volume(volume_id)
        if offset < 0 or length < 0 or offset + length > vol.size_gib * GIB:
            raise InvalidSpec(
                f"range {offset}+{length} is outside volume {volume_id} "
                f"({vol.size_gib * GIB} bytes)"
            )
        return vol

    # -- snapshots -------------------------------------------------------------------------

    async def create_snapshot(self, volume_id: str, snap_id: str) -> SnapshotInfo:
        async with self.pool.lock(f"vol:{volume_id}"):
            existing = self.pool.snapshots.get(snap_id)
            if existing is not None:
                if existing.volume_id != volume_id:
                    raise InvalidSpec(
                        f"snapshot {snap_id} already exists, of volume {existing.volume_id}"
                    )
                return snapshot_info(existing)
            vol = self.pool.volume(volume_id)
            await self._work("create_snapshot", self.timings.create_snapshot, volume_id)
            snap = SimSnapshot(
                snap_id,
                volume_id,
                vol.size_gib,
                vol.data.parent,
                dict(vol.data.own),
                self.pool.clock(),
            )
            self.pool.snapshots[snap_id] = snap
            return snapshot_info(snap)

    async def list_snapshots(self, volume_id: str | None = None) -> list[SnapshotInfo]:
        return [
            snapshot_info(s)
            for _, s in sorted(self.pool.snapshots.items())
            if volume_id in (None, s.volume_id)
        ]

    async def delete_snapshot(self, snap_id: str) -> None:
        snap = self.pool.snapshots.get(snap_id)
        if snap is None:
            return
        async with self.pool.lock(f"vol:{snap.volume_id}"):
            if snap_id not in self.pool.snapshots:
                return
            await self._work("delete_snapshot", self.timings.delete_snapshot, snap_id)
            self.pool.snapshots.pop(snap_id, None)

    async def rollback(self, volume_id: str, snap_id: str) -> VolumeInfo:
        async with self.pool.lock(f"vol:{volume_id}"):
            vol = self.pool.volume(volume_id)
            snap = self.pool.snapshot(snap_id)
            if snap.volume_id != volume_id:
                raise InvalidSpec(
                    f"snapshot {snap_id} is of volume {snap.volume_id}, not {volume_id}"
                )
            await self._work("rollback", self.timings.rollback, volume_id)
            own = dict(snap.own)
            grow = len(own) - len(vol.data.own)
            if grow > 0:
                self.pool.reserve_blocks(grow)
            else:
                self.pool.release_blocks(-grow)
            vol.data = BlockStore(self.pool.config.block_size, parent=snap.parent, own=own)
            vol.size_gib = snap.size_gib
            return self.pool.volume_info(vol)

    # -- images ----------------------------------------------------------------------------

    async def import_image(
        self,
        image_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
    ) -> ImageInfo:
        async with self.pool.lock(f"img:{image_id}"):
            existing = self.pool.images.get(image_id)
            if existing is not None and expected_sha256 == existing.info.sha256:
                return existing.info
            blocks, head, size, digest = await self._consume(chunks)
            if expected_sha256 is not None and digest != expected_sha256.lower():
                raise BackendFailure(
                    f"checksum mismatch importing image {image_id}: "
                    f"expected sha256 {expected_sha256}, got {digest}"
                )
            if existing is not None:
                if existing.info.sha256 == digest:
                    return existing.info
                raise InvalidSpec(f"image {image_id} already exists with different content")
            fmt, virtual = detect_format(head, size)
            await self._work("import_image", self.timings.import_image, image_id)
            kept = blocks if fmt == "raw" else {}  # the sim does not decode qcow2/vmdk
            self.pool.reserve_blocks(len(kept))
            info = ImageInfo(image_id, fmt, virtual, size, digest)
            self.pool.images[image_id] = SimImage(info, kept)
            return info

    async def _consume(
        self, chunks: AsyncIterator[bytes]
    ) -> tuple[dict[int, bytes], bytes, int, str]:
        """Read the stream into sparse blocks: (blocks, header bytes, size, sha256)."""
        bs = self.pool.config.block_size
        hasher = hashlib.sha256()
        blocks: dict[int, bytes] = {}
        pending = bytearray()
        head = b""
        size = next_index = 0
        async for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            if len(head) < HEADER_BYTES:
                head = (head + chunk)[:HEADER_BYTES]
            pending += chunk
            next_index += blocks_from_stream_buffer(pending, bs, next_index, blocks)
        if pending:
            pending += bytes(bs - len(pending))
            blocks_from_stream_buffer(pending, bs, next_index, blocks)
        return blocks, head, size, hasher.hexdigest()

    async def list_images(self) -> list[ImageInfo]:
        return [img.info for _, img in sorted(self.pool.images.items())]

    async def delete_image(self, image_id: str) -> None:
        async with self.pool.lock(f"img:{image_id}"):
            image = self.pool.images.get(image_id)
            if image is None:
                return
            await self._work("delete_image", self.timings.delete_image, image_id)
            del self.pool.images[image_id]
            self.pool.release_blocks(len(image.blocks))

    async def export_volume(self, volume_id: str) -> AsyncIterator[bytes]:
        vol = self.pool.volume(volume_id)
        self.faults.check("export_volume", volume_id)
        pinned = BlockStore(self.pool.config.block_size, parent=vol.data.flatten())
        count = vol.size_gib * GIB // self.pool.config.block_size
        return _stream(pinned, count)

    async def attach_target(self, volume_id: str) -> AttachTarget:
        """A made-up path: the sim hypervisor opens nothing."""
        self.pool.volume(volume_id)
        return AttachTarget(f"/sim/volumes/{volume_id}", "raw")

    async def allocated_extents(self, volume_id: str) -> list[Extent]:
        """The blocks the volume or its pinned source hold, merged into runs."""
        vol = self.pool.volume(volume_id)
        bs = self.pool.config.block_size
        extents: list[Extent] = []
        for index in sorted(set(vol.data.parent) | set(vol.data.own)):
            if index * bs >= vol.size_gib * GIB:
                break
            if extents and extents[-1][0] + extents[-1][1] == index * bs:
                extents[-1] = (extents[-1][0], extents[-1][1] + bs)
            else:
                extents.append((index * bs, bs))
        return extents

    # -- helpers ---------------------------------------------------------------------------

    async def _work(self, operation: str, seconds: float, resource_id: str) -> None:
        """The backend doing ``operation``: it takes time, then may fail (by injection)."""
        await self._sleep(seconds)
        self.faults.check(operation, resource_id)


async def _stream(data: BlockStore, count: int) -> AsyncIterator[bytes]:
    for n, block in enumerate(data.iter_blocks(count)):
        yield block
        if n % 256 == 255:
            await asyncio.sleep(0)  # let other tasks run during a long export
