"""The simulated storage pool: volumes, snapshots and images that outlive a driver instance.

Like a directory of qcow2 files or a Ceph pool, the :class:`SimStoragePool` is what stays
when the agent restarts; :class:`SimStorageDriver` instances come and go over it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from altostack.drivers.errors import (
    ImageNotFound,
    InsufficientResources,
    SnapshotNotFound,
    VolumeNotFound,
)
from altostack.drivers.storage.base import GIB, ImageInfo, PoolInfo, SnapshotInfo, VolumeInfo
from altostack.drivers.storage.blocks import BlockStore


@dataclass(frozen=True)
class SimStorageConfig:
    capacity_gib: float = 2048
    """Thin pool capacity (fractions allowed, so a test can fill a pool quickly)."""
    block_size: int = 64 * 1024

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity_gib * GIB)

    def __post_init__(self) -> None:
        if self.block_size < 512 or GIB % self.block_size:
            raise ValueError("block_size must divide 1 GiB and be at least 512 bytes")


@dataclass
class SimVolume:
    id: str
    size_gib: int
    data: BlockStore
    backing: str | None


@dataclass
class SimSnapshot:
    id: str
    volume_id: str
    size_gib: int
    parent: Mapping[int, bytes]
    own: dict[int, bytes]
    created_at: datetime


@dataclass
class SimImage:
    info: ImageInfo
    blocks: Mapping[int, bytes] = field(default_factory=dict)
    """The guest-visible data (raw images only; the sim does not decode qcow2/vmdk)."""


class SimStoragePool:
    """The pool's objects and its space accounting.

    Allocation counts the blocks volumes and images own; snapshots share their blocks
    with the volume and are not counted (a real pool charges them only for what changed).
    """

    def __init__(
        self,
        config: SimStorageConfig | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or SimStorageConfig()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.volumes: dict[str, SimVolume] = {}
        self.snapshots: dict[str, SimSnapshot] = {}
        self.images: dict[str, SimImage] = {}
        self.allocated_blocks = 0
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """Serialise operations on one object (``vol:<id>`` or ``img:<id>``)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    def volume(self, volume_id: str) -> SimVolume:
        try:
            return self.volumes[volume_id]
        except KeyError:
            raise VolumeNotFound(volume_id) from None

    def snapshot(self, snap_id: str) -> SimSnapshot:
        try:
            return self.snapshots[snap_id]
        except KeyError:
            raise SnapshotNotFound(snap_id) from None

    def image(self, image_id: str) -> SimImage:
        try:
            return self.images[image_id]
        except KeyError:
            raise ImageNotFound(image_id) from None

    def reserve_blocks(self, count: int) -> None:
        """Account ``count`` new blocks, or refuse when the pool would overflow."""
        capacity = self.config.capacity_bytes // self.config.block_size
        if self.allocated_blocks + count > capacity:
            raise InsufficientResources(
                f"storage pool full: {self.allocated_blocks * self.config.block_size} of "
                f"{self.config.capacity_bytes} bytes allocated"
            )
        self.allocated_blocks += count

    def release_blocks(self, count: int) -> None:
        self.allocated_blocks -= count

    def volume_info(self, vol: SimVolume) -> VolumeInfo:
        allocated = len(vol.data.own) * self.config.block_size
        return VolumeInfo(vol.id, vol.size_gib, allocated, vol.backing)

    def pool_info(self) -> PoolInfo:
        return PoolInfo(
            capacity_bytes=self.config.capacity_bytes,
            allocated_bytes=self.allocated_blocks * self.config.block_size,
            provisioned_bytes=sum(v.size_gib for v in self.volumes.values()) * GIB,
        )


def snapshot_info(snap: SimSnapshot) -> SnapshotInfo:
    return SnapshotInfo(snap.id, snap.volume_id, snap.size_gib, snap.created_at)
