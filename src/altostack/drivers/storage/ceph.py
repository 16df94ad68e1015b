"""The ``ceph`` storage backend: one RBD pool (3 replicas) shared by every host of a cluster.

Layout and the blocking steps: :mod:`altostack.drivers.storage.ceph_rbd`; connection,
health and error translation: :mod:`altostack.drivers.storage.ceph_cluster`. Every
librados/librbd call runs in a thread (``asyncio.to_thread``) so the event loop never waits
on the cluster; one asyncio lock per volume/image serialises this agent's operations on it
(RBD's exclusive lock guards the data against other hosts).

Choices, and why:

- **Images** are stored raw (qcow2/VMDK converted once with ``qemu-img``, checked first
  like the ``local`` backend: no backing files, no external data) with a protected
  snapshot ``base``; **volumes from images are clones** of it: copy-on-write, instant,
  whatever the image size.
- **Volumes from snapshots are clones** of the snapshot; **clones of volumes** clone a
  hidden snapshot taken for them. Clones are RBD clone v2, so a source snapshot, volume or
  image can be deleted while clones read through it: it waits in the (snapshot) trash and
  is collected when its last clone goes. No delete ever copies data.
- **Snapshots are RBD snapshots** (crash-consistent, also while QEMU writes: they are
  taken by the OSDs); rollback restores data and size.
- **Capabilities**: thin clones, online resize (``block_resize`` in QEMU, or a resize here
  that librbd announces to the open image), live snapshots, and ``shared``: every host
  opens the same image, so live migration copies no disk.

QEMU attaches a volume directly through librbd (``qemu-block-extra``):
:meth:`CephStorageDriver.qemu_blockdev` gives the ``-blockdev`` / ``blockdev-add``
description, :meth:`CephStorageDriver.qemu_filename` the legacy ``rbd:`` form.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    ImageNotFound,
    InvalidSpec,
    SnapshotNotFound,
    VolumeNotFound,
)
from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage import ceph_cluster, local_upload, qemu_tools
from altostack.drivers.storage.base import (
    GIB,
    AttachTarget,
    Extent,
    ImageInfo,
    PoolHealth,
    PoolInfo,
    SnapshotInfo,
    StorageCapabilities,
    StorageDriver,
    VolumeInfo,
    VolumeSpec,
)
from altostack.drivers.storage.ceph_cluster import CephConfig, translated
from altostack.drivers.storage.ceph_rbd import (
    BASE_SNAP,
    SNAP_FLAGS,
    RbdPool,
    StoredImage,
    img_name,
    tmp_name,
    vol_name,
)
from altostack.drivers.storage.local_pool import check_id

__all__ = ["CEPH_STORAGE_CAPABILITIES", "CephConfig", "CephStorageDriver"]

CEPH_STORAGE_CAPABILITIES = StorageCapabilities(
    thin_clones=True, online_resize=True, live_snapshots=True, shared=True
)
EXPORT_CHUNK = 4 << 20

T = TypeVar("T")


class CephStorageDriver(StorageDriver):
    """A storage pool on one RBD pool (and optional RBD namespace) of a Ceph cluster.

    Connects on first use; :meth:`close` disconnects.
    """

    def __init__(
        self,
        config: CephConfig,
        *,
        faults: FaultInjector | None = None,
        copy_timeout: float = 3600.0,
    ) -> None:
        self.config = config
        self.faults = faults or FaultInjector()
        self.copy_timeout = copy_timeout
        self._cluster: Any = None
        self._pool: RbdPool | None = None
        self._connecting = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def capabilities(self) -> StorageCapabilities:
        return CEPH_STORAGE_CAPABILITIES

    # -- connection ------------------------------------------------------------------------

    async def _rbd(self) -> RbdPool:
        if self._pool is None:
            async with self._connecting:
                if self._pool is None:
                    cluster, ioctx = await asyncio.to_thread(ceph_cluster.connect, self.config)
                    label = self.config.pool
                    if self.config.namespace:
                        label += f"/{self.config.namespace}"
                    pool = RbdPool(ioctx, label, int(cluster.get_instance_id()))
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(pool.purge_stale_temps)
                    self._cluster, self._pool = cluster, pool
        return self._pool

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread with librados/librbd errors typed."""
        with translated(what):
            return await asyncio.to_thread(fn, *args)

    async def close(self) -> None:
        """Disconnect from the cluster (the driver reconnects if used again)."""
        pool, cluster = self._pool, self._cluster
        self._pool = self._cluster = None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pool.ioctx.close)
        if cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(cluster.shutdown)

    # -- QEMU ------------------------------------------------------------------------------

    def qemu_blockdev(self, volume_id: str, *, node_name: str | None = None) -> dict[str, Any]:
        """The ``-blockdev``/``blockdev-add`` node that opens the volume through librbd.

        The cephx key is not in it: QEMU reads the keyring the conf file names (or
        ``/etc/ceph/ceph.client.<id>.keyring``), so no secret reaches a command line or QMP.
        Put a ``raw`` format node (or the device) on top of this protocol node.
        """
        check_id("volume", volume_id)
        node: dict[str, Any] = {
            "driver": "rbd",
            "pool": self.config.pool,
            "image": vol_name(volume_id),
            "conf": str(self.config.conf_path),
            "user": self.config.client_id,
        }
        if self.config.namespace:
            node["namespace"] = self.config.namespace
        if node_name is not None:
            node["node-name"] = node_name
        return node

    async def attach_target(self, volume_id: str) -> AttachTarget:
        """The volume as QEMU opens it through librbd (no host file, no disk copy)."""
        if await self.get_volume(volume_id) is None:
            raise VolumeNotFound(volume_id)
        node = self.qemu_blockdev(volume_id)
        return AttachTarget(
            self.qemu_filename(volume_id),
            "raw",
            protocol=tuple((k, str(v)) for k, v in node.items()),
        )

    def qemu_filename(self, volume_id: str) -> str:
        """The same as an ``rbd:`` file name (``qemu-img``, ``-drive file=``)."""
        check_id("volume", volume_id)
        where = self.config.pool
        if self.config.namespace:
            where += f"/{self.config.namespace}"
        name = f"rbd:{where}/{vol_name(volume_id)}:id={self.config.client_id}"
        name += f":conf={_escape(str(self.config.conf_path))}"
        if self.config.keyring is not None:
            name += f":keyring={_escape(str(self.config.keyring))}"
        return name

    # -- pool ------------------------------------------------------------------------------

    async def pool_info(self) -> PoolInfo:
        """Capacity from ``ceph df``, use from ``rbd du``, health from ``ceph health``.

        A cluster that does not answer is reported (health ``error``, sizes 0) rather than
        raised: the admin API must be able to show that the pool is down.
        """
        timeout = self.config.op_timeout
        try:
            pool = await self._rbd()
        except Exception as exc:
            return PoolInfo(0, 0, 0, "error", f"cannot connect to the Ceph cluster: {exc}")
        status, detail = await asyncio.to_thread(ceph_cluster.health, self._cluster, timeout)
        if status == "error" and detail.startswith("no health report"):
            return PoolInfo(0, 0, 0, status, detail)
        capacity = await self._call(
            "ceph df", ceph_cluster.pool_capacity, self._cluster, self.config.pool, timeout
        )
        try:
            allocated, provisioned = await self._call("rbd du", pool.usage)
        except DriverError as exc:  # OSDs not answering: say so, do not hide the health
            worse: PoolHealth = "error" if status == "error" else "degraded"
            return PoolInfo(capacity, 0, 0, worse, f"{detail}; usage unknown: {exc.message}")
        return PoolInfo(capacity, allocated, provisioned, status, detail)

    # -- volumes ---------------------------------------------------------------------------

    async def ensure_volume(self, spec: VolumeSpec) -> VolumeInfo:
        check_id("volume", spec.id)
        pool = await self._rbd()
        async with self._lock(f"vol:{spec.id}"):
            existing = await self._call("rbd info", pool.volume, spec.id)
            if existing is not None:
                if spec.size_gib != existing.size_gib:
                    await self._call(
                        "rbd resize",
                        pool.grow,
                        spec.id,
                        spec.size_gib,
                        self._check("resize_volume", spec.id),
                    )
                return await self._call("rbd info", pool.volume_or_raise, spec.id)
            tmp = tmp_name(spec.id)
            try:
                await self._create(pool, spec, tmp)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(pool.remove_quietly, tmp))
                raise
            return await self._call("rbd info", pool.volume_or_raise, spec.id)

    async def _create(self, pool: RbdPool, spec: VolumeSpec, tmp: str) -> None:
        """Make the volume as ``tmp`` with its source's data as of now, then rename it."""
        size = spec.size_gib * GIB

        def commit() -> None:
            self.faults.check("create_volume", spec.id)
            pool.rename(tmp, vol_name(spec.id))

        if spec.source is None:
            await self._call("rbd create", _then(pool.create, commit), tmp, size)
            return
        kind, source_id = spec.source
        if kind == "image":
            stored = await self._call("rbd info", pool.image_or_raise, source_id)
            _check_fits(spec, stored.info.virtual_size_bytes, f"image {source_id}")
            if stored.problem:
                raise InvalidSpec(f"image {source_id} cannot be used: {stored.problem}")
            async with self._lock(f"img:{source_id}"):
                if await self._call("rbd info", pool.image, source_id) is None:
                    raise ImageNotFound(source_id)
                await self._call("rbd clone", pool.clone, img_name(source_id), BASE_SNAP, tmp)
            await self._call("rbd resize", _then(pool.resize, commit), tmp, size)
            return
        if kind == "snapshot":
            snap = await self._call("rbd snap info", pool.snapshot, source_id)
            if snap is None:
                raise SnapshotNotFound(source_id)
            async with self._lock(f"vol:{snap.volume_id}"):
                if await self._call("rbd snap info", pool.snapshot, source_id) is None:
                    raise SnapshotNotFound(source_id)
                _check_fits(spec, snap.size_gib * GIB, f"snapshot {source_id}")
                await self._call("rbd clone", pool.clone, vol_name(snap.volume_id), source_id, tmp)
            await self._call("rbd resize", _then(pool.resize, commit), tmp, size)
            return
        if source_id == spec.id:
            raise VolumeNotFound(source_id)
        await self._call("rbd info", pool.volume_or_raise, source_id)
        async with self._lock(f"vol:{source_id}"):
            source = await self._call("rbd info", pool.volume_or_raise, source_id)
            _check_fits(spec, source.size_gib * GIB, f"volume {source_id}")
            # The clone's parent: a hidden snapshot of the source, trashed when the source
            # or the snapshot goes, collected when the clone goes.
            hidden = f".clone.{spec.id}"
            await self._call("rbd clone", _clone_volume, pool, source_id, hidden, tmp)
        await self._call("rbd resize", _then(pool.resize, commit), tmp, size)

    async def get_volume(self, volume_id: str) -> VolumeInfo | None:
        pool = await self._rbd()
        return await self._call("rbd info", pool.volume, volume_id)

    async def list_volumes(self) -> list[VolumeInfo]:
        pool = await self._rbd()
        return await self._call("rbd ls", pool.volumes)

    async def delete_volume(self, volume_id: str, *, force: bool = False) -> None:
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            deleted = await self._call(
                "rbd rm",
                pool.delete_volume,
                volume_id,
                force,
                self._check("delete_volume", volume_id),
            )
        if deleted:
            await self._call("rbd trash purge", pool.collect_trash)

    async def resize_volume(self, volume_id: str, size_gib: int) -> VolumeInfo:
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            await self._call("rbd info", pool.volume_or_raise, volume_id)
            await self._call(
                "rbd resize",
                pool.grow,
                volume_id,
                size_gib,
                self._check("resize_volume", volume_id),
            )
            return await self._call("rbd info", pool.volume_or_raise, volume_id)

    # -- data ------------------------------------------------------------------------------

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        pool = await self._rbd()
        return await self._call(
            "rbd read", pool.read, volume_id, offset, length, self._check("read", volume_id)
        )

    async def write(self, volume_id: str, offset: int, data: bytes) -> None:
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            await self._call(
                "rbd write", pool.write, volume_id, offset, data, self._check("write", volume_id)
            )

    async def allocated_extents(self, volume_id: str) -> list[Extent]:
        pool = await self._rbd()
        return await self._call("rbd diff", pool.allocated_extents, volume_id)

    # -- snapshots -------------------------------------------------------------------------

    async def create_snapshot(self, volume_id: str, snap_id: str) -> SnapshotInfo:
        check_id("snapshot", snap_id)
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            return await self._call(
                "rbd snap create",
                pool.create_snapshot,
                volume_id,
                snap_id,
                self._check("create_snapshot", volume_id),
            )

    async def list_snapshots(self, volume_id: str | None = None) -> list[SnapshotInfo]:
        pool = await self._rbd()
        return await self._call("rbd snap ls", pool.snapshots, volume_id)

    async def delete_snapshot(self, snap_id: str) -> None:
        pool = await self._rbd()
        record = await self._call("rbd snap info", pool.index_get, snap_id)
        if record is None:
            return
        volume_id = str(record["volume_id"])
        async with self._lock(f"vol:{volume_id}"):
            await self._call(
                "rbd snap rm",
                pool.delete_snapshot,
                volume_id,
                snap_id,
                self._check("delete_snapshot", snap_id),
            )

    async def rollback(self, volume_id: str, snap_id: str) -> VolumeInfo:
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            return await self._call(
                "rbd snap rollback",
                pool.rollback,
                volume_id,
                snap_id,
                self._check("rollback", volume_id),
            )

    # -- images ----------------------------------------------------------------------------

    async def import_image(
        self,
        image_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
    ) -> ImageInfo:
        check_id("image", image_id)
        pool = await self._rbd()
        async with self._lock(f"img:{image_id}"):
            existing = await self._call("rbd info", pool.image, image_id)
            if existing is not None and expected_sha256 == existing.info.sha256:
                return existing.info
            with tempfile.TemporaryDirectory(prefix="alto-rbd-import-", dir=self._work_dir()) as d:
                upload = await local_upload.receive(chunks, Path(d) / "upload")
                if expected_sha256 is not None and upload.sha256 != expected_sha256.lower():
                    raise BackendFailure(
                        f"checksum mismatch importing image {image_id}: "
                        f"expected sha256 {expected_sha256}, got {upload.sha256}"
                    )
                if existing is not None:
                    if existing.info.sha256 == upload.sha256:
                        return existing.info
                    raise InvalidSpec(f"image {image_id} already exists with different content")
                found = await local_upload.inspect(upload)
                info = ImageInfo(
                    image_id, found.format, found.virtual_size, upload.size, upload.sha256
                )
                raw_path: Path | None = None
                if found.problem is None:
                    raw_path = upload.path
                    if found.format != "raw":
                        raw_path = Path(d) / "raw"
                        await qemu_tools.run(
                            ["qemu-img", "convert", "-q", "-f", found.format, "-O", "raw",
                             str(upload.path), str(raw_path)],
                            timeout=self.copy_timeout,
                        )  # fmt: skip
                stored = StoredImage(info, found.problem)
                check = self._check("import_image", image_id)
                await self._call("rbd import", _store, pool, image_id, stored, raw_path, check)
            return info

    async def list_images(self) -> list[ImageInfo]:
        pool = await self._rbd()
        return await self._call("rbd ls", pool.images)

    async def delete_image(self, image_id: str) -> None:
        pool = await self._rbd()
        async with self._lock(f"img:{image_id}"):
            deleted = await self._call(
                "rbd trash mv", pool.delete_image, image_id, self._check("delete_image", image_id)
            )
        if deleted:
            await self._call("rbd trash purge", pool.collect_trash)

    # -- export ----------------------------------------------------------------------------

    async def export_volume(self, volume_id: str) -> AsyncIterator[bytes]:
        pool = await self._rbd()
        async with self._lock(f"vol:{volume_id}"):
            snap, size, extents = await self._call(
                "rbd export", pool.pin, volume_id, self._check("export_volume", volume_id)
            )
        return self._stream(pool, volume_id, snap, size, extents)

    async def _stream(
        self, pool: RbdPool, volume_id: str, snap: str, size: int, extents: list[Extent]
    ) -> AsyncIterator[bytes]:
        """The pinned snapshot's bytes; holes come out as zeros without being read."""
        zeros = bytes(EXPORT_CHUNK)
        try:
            pos = 0
            for start, length in [*extents, (size, 0)]:
                while pos < start:
                    n = min(EXPORT_CHUNK, start - pos)
                    yield zeros if n == EXPORT_CHUNK else zeros[:n]
                    pos += n
                end = start + length
                while pos < end:
                    n = min(EXPORT_CHUNK, end - pos)
                    chunk = await self._call(
                        "rbd export", pool.read_pinned, volume_id, snap, pos, n
                    )
                    if len(chunk) != n:
                        raise BackendFailure(f"export of {volume_id}: short read at {pos}")
                    yield chunk
                    pos += n
        finally:
            await asyncio.shield(asyncio.to_thread(pool.unpin, volume_id, snap))

    # -- helpers ---------------------------------------------------------------------------

    def _check(self, operation: str, resource_id: str) -> Callable[[], None]:
        """The fault point of ``operation``, called by the blocking step before it commits."""
        return lambda: self.faults.check(operation, resource_id)

    def _work_dir(self) -> str | None:
        return None if self.config.work_dir is None else str(self.config.work_dir)

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield


def _then(step: Callable[..., None], commit: Callable[[], None]) -> Callable[..., None]:
    """``step`` followed by ``commit`` in the same thread call."""

    def both(*args: Any) -> None:
        step(*args)
        commit()

    return both


def _clone_volume(pool: RbdPool, source_id: str, hidden: str, tmp: str) -> None:
    """Clone the source as of now: a hidden snapshot left by a failed earlier attempt for
    the same new volume holds older data, so it is replaced, never reused."""
    with pool.open(vol_name(source_id)) as image:
        if hidden in {s["name"] for s in image.list_snaps()}:
            image.remove_snap(hidden)
        image.create_snap(hidden, SNAP_FLAGS)
    pool.clone(vol_name(source_id), hidden, tmp)


def _store(
    pool: RbdPool,
    image_id: str,
    stored: StoredImage,
    raw_path: Path | None,
    check: Callable[[], None],
) -> None:
    if raw_path is None:
        pool.store_image(image_id, stored, None, check)
        return
    with raw_path.open("rb") as raw:
        pool.store_image(image_id, stored, raw, check)


def _check_fits(spec: VolumeSpec, source_bytes: int, source: str) -> None:
    min_gib = max(1, math.ceil(source_bytes / GIB))
    if spec.size_gib < min_gib:
        raise InvalidSpec(
            f"volume {spec.id} of {spec.size_gib} GiB is smaller than its source "
            f"{source} ({min_gib} GiB)"
        )


def _escape(value: str) -> str:
    """A value inside QEMU's ``rbd:`` file name, where ``:`` separates options."""
    return value.replace("\\", "\\\\").replace(":", "\\:")
