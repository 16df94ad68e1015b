"""The ``local`` storage backend: one pool of qcow2 files in a directory of one host.

Layout and what is authoritative: :mod:`altostack.drivers.storage.local_pool`. All disk
work goes through ``qemu-img`` / ``qemu-io`` as asyncio subprocesses
(:mod:`altostack.drivers.storage.qemu_tools`).

Choices, and why:

- **Volumes from images are thin**: a qcow2 overlay on the image's base file
  (``-b ../bases/<sha256>.<fmt> -F <fmt>``, relative so the pool can move). Deleting the
  image only removes its JSON; the base file stays, hidden, until no volume uses it
  (checked under one lock with every create that may reference a base), so no overlay is
  ever broken and no flattening copy is needed.
- **Snapshots are qcow2 internal snapshots** (``qemu-img snapshot -c/-a/-d``): rollback
  restores data *and size* (QEMU ≥ 5.0 records the disk size in the snapshot and
  ``-a`` truncates back to it), snapshots taken later survive a rollback, and a forced
  volume delete removes them with the file. External snapshot files would make rollback a
  chain surgery and leave every later snapshot depending on the one rolled back to.
- **Clones and volumes from snapshots are copies** (``qemu-img convert``, sparse; ``-l
  snapshot.name=`` for a snapshot). They share only the image base their source was made
  from (``-B``): nothing a user can delete. So a clone or a volume from a snapshot outlives
  its source and the snapshot trivially, and sees nothing written to either later.
- **Writes and reads** are ``qemu-io write -s <file>`` and ``qemu-img convert`` of a
  512-byte-aligned window (``driver=raw,offset=,size=`` over the qcow2 node) to a
  temporary file. ~20 ms each: the contract's checks, an agent's occasional reads, not a
  data path (guests do their I/O through QEMU).
- **Creates are made in tmp/ and renamed** into place, so a failed, cancelled or crashed
  create leaves no volume; one asyncio lock per volume serialises its operations.

What the backend alone cannot do (capabilities all off): online resize and live
snapshots need the running QEMU (``block_resize``, ``blockdev-snapshot-sync``, done by the
compute driver); clones are copies, not instant; the pool is one host's disk. A volume
held open by a running VM makes data operations fail with ``InvalidState("in use")``
(QEMU's image locking).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from altostack.drivers.errors import (
    BackendFailure,
    ImageNotFound,
    InvalidSpec,
    InvalidState,
    SnapshotNotFound,
    VolumeNotFound,
)
from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage import local_upload, qemu_tools
from altostack.drivers.storage.base import (
    GIB,
    AttachTarget,
    ImageInfo,
    PoolInfo,
    SnapshotInfo,
    StorageCapabilities,
    StorageDriver,
    VolumeInfo,
    VolumeSpec,
)
from altostack.drivers.storage.local_pool import (
    PoolPaths,
    allocated_bytes,
    check_id,
    fsync_dir,
    qcow2_header,
    read_json,
    unlink,
    write_json,
)

__all__ = ["LOCAL_STORAGE_CAPABILITIES", "LocalStorageDriver"]

LOCAL_STORAGE_CAPABILITIES = StorageCapabilities()
"""Nothing optional: see the module docstring for why."""

EXPORT_CHUNK = 1 << 20
_ZEROS = bytes(EXPORT_CHUNK)


@dataclass(frozen=True)
class _Volume:
    id: str
    path: Path
    size_bytes: int
    backing: str | None  # as written in the qcow2 header (relative to volumes/)

    @property
    def size_gib(self) -> int:
        return self.size_bytes // GIB

    @property
    def base(self) -> Path | None:
        """The base file this volume's data rests on, if any."""
        if self.backing is None:
            return None
        return Path(os.path.normpath(self.path.parent / self.backing))


@dataclass(frozen=True)
class _Image:
    info: ImageInfo
    base: str | None  # file name in bases/
    base_format: str | None
    problem: str | None


class LocalStorageDriver(StorageDriver):
    """A storage pool of qcow2 files under ``root`` (created if missing)."""

    def __init__(
        self,
        root: Path,
        *,
        faults: FaultInjector | None = None,
        copy_timeout: float = 3600.0,
    ) -> None:
        self.paths = PoolPaths(root)
        self.paths.purge_stale_temps()
        self.faults = faults or FaultInjector()
        self.copy_timeout = copy_timeout
        """Seconds a whole-volume copy (clone, export, import conversion) may take."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._bases = asyncio.Lock()
        """Held while a volume is made from an image, while an image's record is written or
        removed, and while bases are garbage-collected, so a base is never removed under a
        volume being made on it."""

    @property
    def capabilities(self) -> StorageCapabilities:
        return LOCAL_STORAGE_CAPABILITIES

    async def pool_info(self) -> PoolInfo:
        return await asyncio.to_thread(self._pool_info)

    def _pool_info(self) -> PoolInfo:
        st = os.statvfs(self.paths.root)
        files = [*self.paths.volumes.glob("*.qcow2"), *self.paths.bases.iterdir()]
        provisioned = 0
        for vol_id in self.paths.volume_ids():
            with contextlib.suppress(OSError):
                provisioned += qcow2_header(self.paths.volume(vol_id))[0]
        return PoolInfo(
            capacity_bytes=st.f_blocks * st.f_frsize,
            allocated_bytes=sum(allocated_bytes(p) for p in files),
            provisioned_bytes=provisioned,
        )

    # -- volumes ---------------------------------------------------------------------------

    async def ensure_volume(self, spec: VolumeSpec) -> VolumeInfo:
        path = self.paths.volume(spec.id)
        async with self._lock(f"vol:{spec.id}"):
            existing = self._find_volume(spec.id)
            if existing is not None:
                if spec.size_gib != existing.size_gib:
                    await self._grow(existing, spec.size_gib)
                return self._volume_info(spec.id)
            tmp = self.paths.temp(spec.id, ".qcow2")

            def commit() -> None:
                self.faults.check("create_volume", spec.id)
                os.rename(tmp, path)
                fsync_dir(path.parent)

            try:
                await self._create(spec, tmp, commit)
            finally:
                unlink(tmp)
            return self._volume_info(spec.id)

    async def _create(self, spec: VolumeSpec, tmp: Path, commit: Callable[[], None]) -> None:
        """Make the new volume at ``tmp`` with its source's data as of now, then ``commit``.

        ``commit`` (the last fault point, then the rename into ``volumes/``) runs while the
        base the new volume rests on, if any, cannot be garbage-collected: under the bases
        lock for an image, under the source's lock for a copy.
        """
        size = f"{spec.size_gib}G"
        if spec.source is None:
            await qemu_tools.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), size])
            commit()
            return
        kind, source_id = spec.source
        if kind == "volume" and source_id == spec.id:  # not there yet, and its lock is held
            raise VolumeNotFound(source_id)
        if kind == "image":
            image = self._image(source_id)
            self._check_fits(spec, image.info.virtual_size_bytes, f"image {source_id}")
            if image.base is None or image.problem is not None:
                raise InvalidSpec(f"image {source_id} cannot be used: {image.problem}")
            async with self._bases:
                if self._read_image(source_id) is None:  # deleted meanwhile
                    raise ImageNotFound(source_id)
                await qemu_tools.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2",
                     "-b", f"../bases/{image.base}", "-F", str(image.base_format),
                     str(tmp), size]
                )  # fmt: skip
                commit()
            return
        if kind == "snapshot":
            snap = self._snapshot_record(source_id)
            if snap is None:
                raise SnapshotNotFound(source_id)
            owner = str(snap["volume_id"])
            if self._find_volume(owner) is None:  # see below: never wait for a missing one
                raise SnapshotNotFound(source_id)
            async with self._lock(f"vol:{owner}"):
                vol = self._find_volume(owner)
                if vol is None or source_id not in await self._snapshot_names(vol):
                    raise SnapshotNotFound(source_id)
                self._check_fits(spec, int(snap["size_gib"]) * GIB, f"snapshot {source_id}")
                await self._copy(vol, tmp, size, commit, snapshot=source_id)
            return
        # A missing source fails before its lock is taken: two creates of missing volumes
        # from each other would otherwise each hold one lock and wait for the other's.
        self._volume(source_id)
        async with self._lock(f"vol:{source_id}"):
            vol = self._volume(source_id)
            self._check_fits(spec, vol.size_bytes, f"volume {source_id}")
            await self._copy(vol, tmp, size, commit)

    def _check_fits(self, spec: VolumeSpec, source_bytes: int, source: str) -> None:
        min_gib = max(1, math.ceil(source_bytes / GIB))
        if spec.size_gib < min_gib:
            raise InvalidSpec(
                f"volume {spec.id} of {spec.size_gib} GiB is smaller than its source "
                f"{source} ({min_gib} GiB)"
            )

    async def _copy(
        self,
        vol: _Volume,
        tmp: Path,
        size: str,
        commit: Callable[[], None],
        *,
        snapshot: str | None = None,
    ) -> None:
        """An independent copy of ``vol`` (or of its snapshot) at ``tmp``, grown to ``size``.

        A source resting on an image base keeps resting on it (``-B``): only what differs
        from the base is copied. No bases lock is needed (a long copy would hold up every
        other create): the caller holds the source's lock, so the source, which uses the
        base, cannot be deleted before the copy is in ``volumes/`` using it too.
        """
        argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2"]
        if snapshot is not None:
            argv += ["-l", f"snapshot.name={snapshot}"]
        base = vol.base
        if base is not None:
            fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
            argv += ["-B", f"../bases/{base.name}", "-F", fmt]
        if base is not None and not base.exists():
            raise BackendFailure(f"volume {vol.id}: its base file {base} is missing")
        # -B is resolved relative to the new file: tmp/ and volumes/ are siblings.
        await qemu_tools.run([*argv, str(vol.path), str(tmp)], timeout=self.copy_timeout)
        await qemu_tools.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), size])
        commit()

    async def get_volume(self, volume_id: str) -> VolumeInfo | None:
        try:
            return self._volume_info(volume_id)
        except (VolumeNotFound, InvalidSpec):
            return None

    async def list_volumes(self) -> list[VolumeInfo]:
        found = []
        for vol_id in self.paths.volume_ids():
            with contextlib.suppress(VolumeNotFound):
                found.append(self._volume_info(vol_id))
        return found

    async def delete_volume(self, volume_id: str, *, force: bool = False) -> None:
        async with self._lock(f"vol:{volume_id}"):
            vol = self._find_volume(volume_id)
            if vol is None:
                return
            snaps = [s.id for s in await self._snapshots_of(vol)]
            if snaps and not force:
                raise InvalidState(
                    "snapshotted",
                    "without snapshots",
                    resource_id=volume_id,
                    message=f"volume {volume_id} has {len(snaps)} snapshot(s) "
                    f"({', '.join(snaps)}); delete them first or force the delete",
                )
            # Unlinking a file QEMU holds open would lose the data silently at the VM's
            # next stop: ask QEMU's image locking first (InvalidState "in use").
            await qemu_tools.info(str(vol.path), fmt="qcow2", share=False)
            self.faults.check("delete_volume", volume_id)
            unlink(vol.path)
            fsync_dir(vol.path.parent)
            for snap_id in snaps:
                unlink(self.paths.snapshot(snap_id))
        if vol.base is not None:
            await self._collect_bases()

    async def resize_volume(self, volume_id: str, size_gib: int) -> VolumeInfo:
        async with self._lock(f"vol:{volume_id}"):
            vol = self._volume(volume_id)
            if size_gib != vol.size_gib:
                await self._grow(vol, size_gib)
            return self._volume_info(volume_id)

    async def _grow(self, vol: _Volume, size_gib: int) -> None:
        if size_gib < vol.size_gib:
            raise InvalidState(
                f"{vol.size_gib} GiB",
                f"at most {size_gib} GiB",
                resource_id=vol.id,
                message=f"volume {vol.id} is {vol.size_gib} GiB; volumes only grow, "
                f"not to {size_gib} GiB",
            )
        self.faults.check("resize_volume", vol.id)
        await qemu_tools.run(
            ["qemu-img", "resize", "-q", "-f", "qcow2", str(vol.path), f"{size_gib}G"]
        )

    # -- data ------------------------------------------------------------------------------

    async def read(self, volume_id: str, offset: int, length: int) -> bytes:
        async with self._lock(f"vol:{volume_id}"):
            vol = self._in_bounds(volume_id, offset, length)
            self.faults.check("read", volume_id)
            if length == 0:
                return b""
            # The raw driver's window must be whole sectors; the offset need not be.
            start = offset - offset % 512
            end = -(-(offset + length) // 512) * 512
            node = (
                f"driver=raw,offset={start},size={end - start},file.driver=qcow2,"
                f"file.file.driver=file,file.file.filename={_opt(vol.path)}"
            )
            out = self.paths.temp(volume_id, ".read")
            try:
                await qemu_tools.run(
                    ["qemu-img", "convert", "--image-opts", node, "-O", "raw", str(out)]
                )
                with out.open("rb") as f:
                    f.seek(offset - start)
                    data = f.read(length)
            finally:
                unlink(out)
            return data + bytes(length - len(data))  # a trailing hole may be short

    async def write(self, volume_id: str, offset: int, data: bytes) -> None:
        async with self._lock(f"vol:{volume_id}"):
            vol = self._in_bounds(volume_id, offset, len(data))
            self.faults.check("write", volume_id)
            if not data:
                return
            src = self.paths.temp(volume_id, ".write")
            try:
                src.write_bytes(data)
                # qemu-io splits its commands on spaces and the pool's path may have some:
                # the data file is named relative to tmp/ (our names never have spaces).
                await qemu_tools.run(
                    ["qemu-io", "-f", "qcow2",
                     "-c", f"write -q -s {src.name} {offset} {len(data)}",
                     "-c", "flush", str(vol.path)],
                    cwd=str(self.paths.tmp),
                )  # fmt: skip
            finally:
                unlink(src)

    def _in_bounds(self, volume_id: str, offset: int, length: int) -> _Volume:
        vol = self._volume(volume_id)
        if offset < 0 or length < 0 or offset + length > vol.size_bytes:
            raise InvalidSpec(
                f"range {offset}+{length} is outside volume {volume_id} ({vol.size_bytes} bytes)"
            )
        return vol

    # -- snapshots -------------------------------------------------------------------------

    async def create_snapshot(self, volume_id: str, snap_id: str) -> SnapshotInfo:
        record_path = self.paths.snapshot(snap_id)
        async with self._lock(f"vol:{volume_id}"):
            existing = await self._valid_snapshot(snap_id)
            if existing is not None:
                if existing.volume_id != volume_id:
                    raise InvalidSpec(
                        f"snapshot {snap_id} already exists, of volume {existing.volume_id}"
                    )
                return existing
            vol = self._volume(volume_id)
            info = SnapshotInfo(snap_id, volume_id, vol.size_gib, datetime.now(UTC))
            # The record first: a snapshot in a qcow2 table without one could not be found
            # by id; a record without its snapshot is ignored as stale.
            write_json(record_path, _snapshot_json(info))
            try:
                self.faults.check("create_snapshot", volume_id)
                await qemu_tools.run(_snapshot_argv("-c", snap_id, vol.path))
            except BaseException:
                unlink(record_path)
                raise
            return info

    async def create_snapshot_with(
        self, volume_id: str, snap_id: str, take: Callable[[], Awaitable[None]]
    ) -> SnapshotInfo:
        """Record a snapshot that ``take`` makes in the volume's qcow2 table by other means:
        the running QEMU holding the volume (``blockdev-snapshot-internal-sync``), since
        ``qemu-img`` may not write an image QEMU has open. Same record-first rule and
        idempotency as :meth:`create_snapshot`; the header is read without the lock."""
        record_path = self.paths.snapshot(snap_id)
        async with self._lock(f"vol:{volume_id}"):
            existing = await self._valid_snapshot(snap_id)  # reads with -U: QEMU holds it
            if existing is not None:
                if existing.volume_id != volume_id:
                    raise InvalidSpec(
                        f"snapshot {snap_id} already exists, of volume {existing.volume_id}"
                    )
                return existing
            vol = self._volume(volume_id)
            info = SnapshotInfo(snap_id, volume_id, vol.size_gib, datetime.now(UTC))
            write_json(record_path, _snapshot_json(info))
            try:
                self.faults.check("create_snapshot", volume_id)
                await take()
            except BaseException:
                unlink(record_path)
                raise
            return info

    async def attach_target(self, volume_id: str) -> AttachTarget:
        """The volume's qcow2 file, for a hypervisor on this host."""
        return AttachTarget(str(self._volume(volume_id).path), "qcow2")

    async def list_snapshots(self, volume_id: str | None = None) -> list[SnapshotInfo]:
        if volume_id is not None:
            vol = self._find_volume(volume_id)
            return [] if vol is None else await self._snapshots_of(vol)
        found: list[SnapshotInfo] = []
        for vol_id in sorted({r["volume_id"] for r in self._snapshot_records()}):
            vol = self._find_volume(vol_id)
            if vol is not None:
                found += await self._snapshots_of(vol)
        return sorted(found, key=lambda s: s.id)

    async def delete_snapshot(self, snap_id: str) -> None:
        record = self._snapshot_record(snap_id)
        if record is None:
            return
        volume_id = str(record["volume_id"])
        async with self._lock(f"vol:{volume_id}"):
            vol = self._find_volume(volume_id)
            if vol is not None and snap_id in await self._snapshot_names(vol):
                self.faults.check("delete_snapshot", snap_id)
                await qemu_tools.run(_snapshot_argv("-d", snap_id, vol.path))
            unlink(self.paths.snapshot(snap_id))

    async def rollback(self, volume_id: str, snap_id: str) -> VolumeInfo:
        async with self._lock(f"vol:{volume_id}"):
            vol = self._volume(volume_id)
            snap = await self._valid_snapshot(snap_id)
            if snap is None:
                raise SnapshotNotFound(snap_id)
            if snap.volume_id != volume_id:
                raise InvalidSpec(
                    f"snapshot {snap_id} is of volume {snap.volume_id}, not {volume_id}"
                )
            self.faults.check("rollback", volume_id)
            await qemu_tools.run(_snapshot_argv("-a", snap_id, vol.path))
            info = self._volume_info(volume_id)
            if info.size_gib != snap.size_gib:  # QEMU < 5.0 kept the current size
                raise BackendFailure(
                    f"rollback of {volume_id} to {snap_id}: size is {info.size_gib} GiB, "
                    f"the snapshot's {snap.size_gib} GiB"
                )
            return info

    def _snapshot_record(self, snap_id: str) -> dict[str, Any] | None:
        try:
            return read_json(self.paths.snapshot(snap_id))
        except InvalidSpec:
            return None

    def _snapshot_records(self) -> list[dict[str, Any]]:
        records = []
        for path in self.paths.snapshots.glob("[!.]*.json"):
            record = read_json(path)
            if record is not None:
                records.append(record)
        return records

    async def _snapshot_names(self, vol: _Volume) -> set[str]:
        """The names in the volume's qcow2 snapshot table: the truth about its snapshots."""
        data = await qemu_tools.info(str(vol.path), fmt="qcow2")
        return {str(s.get("name")) for s in data.get("snapshots", ())}

    async def _snapshots_of(self, vol: _Volume) -> list[SnapshotInfo]:
        records = [r for r in self._snapshot_records() if r.get("volume_id") == vol.id]
        if not records:
            return []
        names = await self._snapshot_names(vol)
        return sorted(
            (_snapshot_info(r) for r in records if r.get("id") in names), key=lambda s: s.id
        )

    async def _valid_snapshot(self, snap_id: str) -> SnapshotInfo | None:
        record = self._snapshot_record(snap_id)
        if record is None:
            return None
        vol = self._find_volume(str(record["volume_id"]))
        if vol is None or snap_id not in await self._snapshot_names(vol):
            return None
        return _snapshot_info(record)

    # -- images ----------------------------------------------------------------------------

    async def import_image(
        self,
        image_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_sha256: str | None = None,
    ) -> ImageInfo:
        record_path = self.paths.image(image_id)
        async with self._lock(f"img:{image_id}"):
            existing = self._read_image(image_id)
            if existing is not None and expected_sha256 == existing.info.sha256:
                return existing.info
            upload_path = self.paths.temp(image_id, ".upload")
            converted = self.paths.temp(image_id, ".qcow2")
            try:
                upload = await local_upload.receive(chunks, upload_path)
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
                self.faults.check("import_image", image_id)
                info = ImageInfo(
                    image_id, found.format, found.virtual_size, upload.size, upload.sha256
                )
                record: dict[str, Any] = {
                    "id": image_id,
                    "format": info.format,
                    "virtual_size_bytes": info.virtual_size_bytes,
                    "size_bytes": info.size_bytes,
                    "sha256": info.sha256,
                    "base": None,
                    "base_format": None,
                    "problem": found.problem,
                }
                if found.problem is None:
                    base_format = "raw" if found.format == "raw" else "qcow2"
                    if found.format == "vmdk":
                        await qemu_tools.run(
                            ["qemu-img", "convert", "-q", "-f", "vmdk", "-O", "qcow2",
                             str(upload_path), str(converted)],
                            timeout=self.copy_timeout,
                        )  # fmt: skip
                        upload_path, converted = converted, upload_path
                    record["base"] = f"{upload.sha256}.{base_format}"
                    record["base_format"] = base_format
                    async with self._bases:
                        base = self.paths.bases / str(record["base"])
                        if not base.exists():  # same content may be stored already
                            os.chmod(upload_path, 0o444)
                            os.rename(upload_path, base)
                            fsync_dir(base.parent)
                        write_json(record_path, record)
                else:
                    write_json(record_path, record)
                return info
            finally:
                unlink(upload_path)
                unlink(converted)

    async def import_disk(self, image_id: str, disk: Path) -> ImageInfo:
        """Store a copy of the qcow2 disk ``disk`` (a whole backing chain) as a new image.

        For "make an image of this VM": ``disk`` is a stopped VM's root overlay; the chain
        is flattened by ``qemu-img convert`` into one standalone qcow2, then imported like an
        upload (checksummed, inspected, idempotent). The VM's disk is only read.
        """
        check_id("image", image_id)
        flat = self.paths.temp(image_id, ".flat.qcow2")
        try:
            await qemu_tools.run(
                ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(disk), str(flat)],
                timeout=self.copy_timeout,
            )
            return await self.import_image(image_id, local_upload.file_chunks(flat))
        finally:
            unlink(flat)

    async def base_file(self, image_id: str) -> tuple[Path, str]:
        """The file (and its qemu format) volumes of this image rest on.

        For the compute driver's root overlays (``qemu-img create -b <file> -F <format>``):
        the file never changes. It is only removed once no image and no volume of this pool
        uses it, so a root overlay outside the pool should keep its own link or copy.
        """
        image = self._image(image_id)
        if image.base is None or image.problem is not None:
            raise InvalidSpec(f"image {image_id} cannot be used: {image.problem}")
        return self.paths.bases / image.base, str(image.base_format)

    async def list_images(self) -> list[ImageInfo]:
        images = []
        for path in sorted(self.paths.images.glob("[!.]*.json")):
            image = self._read_image(path.name.removesuffix(".json"))
            if image is not None:
                images.append(image.info)
        return images

    async def delete_image(self, image_id: str) -> None:
        async with self._lock(f"img:{image_id}"):
            image = self._read_image(image_id)
            if image is None:
                return
            self.faults.check("delete_image", image_id)
            async with self._bases:
                unlink(self.paths.image(image_id))
                fsync_dir(self.paths.images)
        await self._collect_bases()

    async def _collect_bases(self) -> None:
        """Remove base files no image and no volume refers to any more."""
        async with self._bases:
            await asyncio.to_thread(self._collect_bases_now)

    def _collect_bases_now(self) -> None:
        used = set()
        for path in self.paths.images.glob("[!.]*.json"):
            record = read_json(path)
            if record is not None and record.get("base"):
                used.add(str(record["base"]))
        for vol_id in self.paths.volume_ids():
            vol = self._find_volume(vol_id)
            if vol is not None and vol.base is not None:
                used.add(vol.base.name)
        for base in self.paths.bases.iterdir():
            if base.name not in used and not base.name.startswith("."):
                unlink(base)

    def _image(self, image_id: str) -> _Image:
        image = self._read_image(image_id)
        if image is None:
            raise ImageNotFound(image_id)
        return image

    def _read_image(self, image_id: str) -> _Image | None:
        try:
            record = read_json(self.paths.image(image_id))
        except InvalidSpec:
            return None
        if record is None:
            return None
        info = ImageInfo(
            str(record["id"]),
            record["format"],
            int(record["virtual_size_bytes"]),
            int(record["size_bytes"]),
            str(record["sha256"]),
        )
        return _Image(info, record.get("base"), record.get("base_format"), record.get("problem"))

    # -- export ----------------------------------------------------------------------------

    async def export_volume(self, volume_id: str) -> AsyncIterator[bytes]:
        out = self.paths.temp(volume_id, ".export")
        async with self._lock(f"vol:{volume_id}"):
            vol = self._volume(volume_id)
            self.faults.check("export_volume", volume_id)
            try:
                # Pinned now: a sparse raw copy of the whole chain, streamed afterwards.
                await qemu_tools.run(
                    ["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                     str(vol.path), str(out)],
                    timeout=self.copy_timeout,
                )  # fmt: skip
                f = out.open("rb")
            finally:
                unlink(out)  # the open file keeps the data until the stream is done
        return _stream_sparse(f)

    # -- helpers ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    def _find_volume(self, volume_id: str) -> _Volume | None:
        path = self.paths.volume(volume_id)
        try:
            size, backing = qcow2_header(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendFailure(f"volume {volume_id}: {exc}") from exc
        return _Volume(volume_id, path, size, backing)

    def _volume(self, volume_id: str) -> _Volume:
        vol = self._find_volume(volume_id)
        if vol is None:
            raise VolumeNotFound(volume_id)
        return vol

    def _volume_info(self, volume_id: str) -> VolumeInfo:
        vol = self._volume(volume_id)
        base = vol.base
        return VolumeInfo(
            vol.id, vol.size_gib, allocated_bytes(vol.path), None if base is None else str(base)
        )


def _snapshot_argv(action: str, snap_id: str, path: Path) -> list[str]:
    """``qemu-img snapshot`` has no ``-f``: the format is given as image options instead."""
    node = f"driver=qcow2,file.driver=file,file.filename={_opt(path)}"
    return ["qemu-img", "snapshot", "-q", "--image-opts", action, snap_id, node]


def _opt(path: Path) -> str:
    """A path as a value in QEMU's ``key=value,...`` option syntax (commas doubled)."""
    return str(path).replace(",", ",,")


def _snapshot_json(info: SnapshotInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "volume_id": info.volume_id,
        "size_gib": info.size_gib,
        "created_at": info.created_at.isoformat(),
    }


def _snapshot_info(record: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        str(record["id"]),
        str(record["volume_id"]),
        int(record["size_gib"]),
        datetime.fromisoformat(str(record["created_at"])),
    )


async def _stream_sparse(f: Any) -> AsyncIterator[bytes]:
    """The file's bytes in chunks; holes come out as zeros without being read."""
    with f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data_at = size
            while pos < data_at:  # a hole
                n = min(EXPORT_CHUNK, data_at - pos)
                yield _ZEROS[:n] if n < EXPORT_CHUNK else _ZEROS
                pos += n
            if pos >= size:
                break
            hole_at = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
            while pos < hole_at:
                n = min(EXPORT_CHUNK, hole_at - pos)
                f.seek(pos)
                chunk = await asyncio.to_thread(f.read, n)
                if not chunk:
                    raise BackendFailure("export: the copy ended early")
                yield chunk
                pos += len(chunk)
            await asyncio.sleep(0)
