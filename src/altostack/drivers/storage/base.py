"""The storage driver interface: volumes, snapshots and images in one pool.

Backends: ``sim``, ``local`` (qcow2 files) and ``ceph`` (RBD), docs/storage.md. All pass
``tests/contract/test_storage_contract.py``, which checks *data*, not status codes: it
writes bytes through :meth:`StorageDriver.write`, snapshots, overwrites, rolls back and
compares checksums of what :meth:`StorageDriver.read` returns.

Shared rules for every method:

- Ensures are idempotent; deletes of missing objects succeed.
- Objects have independent life cycles: deleting a volume, snapshot or image never breaks a
  volume made from it (a backend flattens the dependents or keeps the parent hidden until
  they go).
- The driver holds no authoritative state: a new instance over the same pool (an agent
  restart) sees every volume, snapshot and image.
- Errors are those of :mod:`altostack.drivers.errors`; a failed operation leaves nothing
  half-made behind.
- Sizes of volumes are whole GiB; reads and writes must stay inside the volume
  (``InvalidSpec`` otherwise).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from altostack.drivers.errors import NotSupported, VolumeNotFound

GIB = 1024**3

SourceKind = Literal["image", "snapshot", "volume"]
Extent = tuple[int, int]
"""``(offset, length)`` in bytes."""


def root_volume_id(vm_id: str) -> str:
    """The pool volume holding a VM's root disk, for compute backends that keep it there."""
    return f"{vm_id}-root"


VolumeSource = tuple[SourceKind, str]
ImageFormat = Literal["qcow2", "raw", "vmdk"]
PoolHealth = Literal["ok", "degraded", "error"]


@dataclass(frozen=True)
class VolumeSpec:
    """A volume of ``size_gib``: blank, or with the data of an image, snapshot or volume."""

    id: str
    size_gib: int
    source: VolumeSource | None = None

    def __post_init__(self) -> None:
        if self.size_gib < 1:
            raise ValueError("size_gib must be positive")
        if self.source is not None and (
            len(self.source) != 2 or self.source[0] not in ("image", "snapshot", "volume")
        ):
            raise ValueError(f"source must be (image|snapshot|volume, id), not {self.source!r}")


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as the pool reports it.

    ``allocated_bytes`` is the space the volume itself uses (thin volumes and clones use
    less than their size). ``backing`` names the copy-on-write parent, if any, in the
    backend's own terms (a file path, an RBD ``pool/image@snap``, ``image:img-…`` in the
    sim); ``None`` for a standalone volume.
    """

    id: str
    size_gib: int
    allocated_bytes: int
    backing: str | None


@dataclass(frozen=True)
class SnapshotInfo:
    """A point-in-time copy of ``volume_id`` when it was ``size_gib`` large."""

    id: str
    volume_id: str
    size_gib: int
    created_at: datetime


@dataclass(frozen=True)
class ImageInfo:
    """An imported image: its detected format, sizes and the checksum of what was streamed."""

    id: str
    format: ImageFormat
    virtual_size_bytes: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class PoolInfo:
    """The pool's capacity and use, for placement and the admin API."""

    capacity_bytes: int
    allocated_bytes: int
    provisioned_bytes: int
    """Sum of volume sizes (can exceed capacity on a thin pool)."""
    health: PoolHealth = "ok"
    """``degraded``: data is served but redundancy is reduced (e.g. an OSD down);
    ``error``: I/O may fail or hang. Surfaced on the storage pool in the admin API."""
    health_detail: str = ""
    """The backend's own words for a health other than ``ok``."""


@dataclass(frozen=True)
class StorageCapabilities:
    """Optional features of a storage backend."""

    thin_clones: bool = False
    """Volumes made from images/snapshots/volumes share data until written (instant)."""
    online_resize: bool = False
    """A volume attached to a running VM can grow and the guest sees it."""
    live_snapshots: bool = False
    """A volume attached to a running VM can be snapshotted (crash-consistent)."""
    shared: bool = False
    """Every host of the cluster reaches the pool (live migration needs no disk copy)."""


class StorageDriver(abc.ABC):
    """One storage pool, seen by one agent."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> StorageCapabilities:
        """The optional features; constant for the life of the driver."""

    @abc.abstractmethod
    async def pool_info(self) -> PoolInfo:
        """Capacity, allocation and provisioning of the pool."""

    # -- volumes ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_volume(self, spec: VolumeSpec) -> VolumeInfo:
        """Make the volume exist with at least ``spec.size_gib``.

        - Creates a missing volume: blank (reads as zeros), or with the data of its source
          image / snapshot / volume as of now. ``ImageNotFound`` / ``SnapshotNotFound`` /
          ``VolumeNotFound`` for a missing source; ``InvalidSpec`` when the volume would be
          smaller than its source. A clone is independent: later writes to either side are
          not seen by the other.
        - Idempotent: an existing volume is returned as is; the source only matters at
          creation. A larger ``size_gib`` grows it (as :meth:`resize_volume`); a smaller one
          raises ``InvalidState`` naming the current size.
        - A failed create leaves no volume behind.
        """

    @abc.abstractmethod
    async def get_volume(self, volume_id: str) -> VolumeInfo | None:
        """The volume, or ``None`` when it does not exist."""

    @abc.abstractmethod
    async def list_volumes(self) -> list[VolumeInfo]:
        """Every volume in the pool (orphans included), sorted by id."""

    @abc.abstractmethod
    async def delete_volume(self, volume_id: str, *, force: bool = False) -> None:
        """Delete the volume and free its space.

        Delete of a missing volume succeeds. A volume with snapshots is refused with
        ``InvalidState`` unless ``force``, which deletes its snapshots too. Volumes cloned
        from it keep their data.
        """

    @abc.abstractmethod
    async def resize_volume(self, volume_id: str, size_gib: int) -> VolumeInfo:
        """Grow the volume; the data is kept and the new space reads as zeros.

        Grow only: a smaller size raises ``InvalidState`` naming the current size; the same
        size is a no-op.
        """

    # -- data ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; never-written areas read as zeros."""

    @abc.abstractmethod
    async def write(self, volume_id: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; visible to the next read, durable when it returns.

        ``InsufficientResources`` when a thin pool is full.
        """

    # -- snapshots -------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_snapshot(self, volume_id: str, snap_id: str) -> SnapshotInfo:
        """Capture the volume's data and size now.

        Idempotent for the same (volume, snapshot) pair; a ``snap_id`` already used for
        another volume raises ``InvalidSpec``. ``VolumeNotFound`` for a missing volume.
        """

    @abc.abstractmethod
    async def list_snapshots(self, volume_id: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one volume (or all), sorted by id."""

    @abc.abstractmethod
    async def delete_snapshot(self, snap_id: str) -> None:
        """Delete the snapshot; a missing one succeeds. Volumes made from it keep their data."""

    @abc.abstractmethod
    async def rollback(self, volume_id: str, snap_id: str) -> VolumeInfo:
        """Make the volume read exactly as when the snapshot was taken, size included.

        The snapshot is kept (roll back again at will); snapshots taken later are kept too.
        ``SnapshotNotFound`` for a missing snapshot; ``InvalidSpec`` when it belongs to
        another volume. The volume must not be in use by a running VM: the control plane
        checks that, the driver cannot.
        """

    # -- images ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def import_image(
        self,
        image_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
    ) -> ImageInfo:
        """Store an image streamed in ``chunks``; detect its format; checksum it.

        - Streamed: the image is never held whole in memory by a real backend.
        - ``expected_sha256`` mismatch raises ``BackendFailure`` and leaves nothing behind;
          so does a stream that fails midway (its error propagates).
        - Format: ``qcow2`` (magic ``QFI\\xfb``, virtual size from its header), ``vmdk``
          (where the backend can read it), else ``raw``.
        - Idempotent: importing the same content under an existing id returns the stored
          image; different content under an existing id raises ``InvalidSpec`` (images are
          immutable).
        """

    @abc.abstractmethod
    async def list_images(self) -> list[ImageInfo]:
        """The images stored in the pool, sorted by id."""

    @abc.abstractmethod
    async def delete_image(self, image_id: str) -> None:
        """Delete the image; a missing one succeeds. Volumes made from it keep their data."""

    @abc.abstractmethod
    async def export_volume(self, volume_id: str) -> AsyncIterator[bytes]:
        """A raw image of the volume, as of this call, streamed in chunks.

        Awaiting the call checks the volume (``VolumeNotFound``) and pins its data, so
        writes made while the stream is read do not appear in it. The stream is exactly
        ``size_gib`` GiB long; chunk sizes are unspecified.
        """

    async def allocated_extents(self, volume_id: str) -> list[Extent]:
        """The byte ranges of the volume that may hold data, sorted, not overlapping.

        What ``qemu-img map`` or ``rbd diff`` tell: everything outside these ranges reads
        as zeros, so an export writes only these (a compact qcow2 instead of a raw image of
        the full size). A backend that cannot tell returns the whole volume, which is
        always correct. ``VolumeNotFound`` for a missing volume.
        """
        info = await self.get_volume(volume_id)
        if info is None:
            raise VolumeNotFound(volume_id)
        return [(0, info.size_gib * GIB)]


@dataclass(frozen=True)
class AttachTarget:
    """How a hypervisor on this host opens a volume: a path (a file here) and its format,
    or, for network storage, the QEMU protocol node (``protocol``, e.g. ``driver=rbd``)
    with ``path`` as a readable name."""

    path: str
    format: Literal["qcow2", "raw"]
    protocol: tuple[tuple[str, str], ...] = ()


async def attach_target(driver: StorageDriver, volume_id: str) -> AttachTarget:
    """Where a compute driver finds ``volume_id`` to attach it, if the backend says.

    Backends tell by defining ``attach_target(volume_id)``; the others cannot be attached
    (``NotSupported``). A free function, not an abstract method, so backends that do not
    attach (yet) need no change.
    """
    method = getattr(driver, "attach_target", None)
    if method is None:
        raise NotSupported("attach", f"{type(driver).__name__} volumes cannot be attached here")
    target: AttachTarget = await method(volume_id)
    return target
