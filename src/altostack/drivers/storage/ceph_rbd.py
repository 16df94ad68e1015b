"""Blocking RBD work for the ``ceph`` backend, one call per driver step (run in a thread).

Layout of one pool (or RBD namespace)::

    vol.<volume_id>           a volume; its user snapshots are RBD snapshots named <snap_id>
    img.<image_id>            an image's data, raw, with its protected snapshot ``base``;
                              format, sizes and sha256 are RBD image metadata (alto.*)
    tmp.<id>.<token>          being made; renamed into place when complete
    alto.snapshots            (RADOS object) omap snap_id -> {volume_id, size_gib, created_at}

Snapshot names starting with ``.`` are the backend's own (the parent of a clone of a
volume, a pinned export) and never listed. The RBD snapshot is the truth about a
snapshot; the omap entry only says on which volume to look and when it was taken.

Clones are RBD clone v2 (``rbd_default_clone_format = 2``): a snapshot with clones can be
removed (it moves to the snapshot trash until its last clone goes) and an image with such
snapshots moves to the RBD trash instead of being removed. :meth:`RbdPool.collect_trash`
removes trashed images once nothing depends on them, so deleting a volume, snapshot or
image never breaks a clone and never copies data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from altostack.drivers.errors import (
    ImageNotFound,
    InvalidSpec,
    InvalidState,
    SnapshotNotFound,
    VolumeNotFound,
)
from altostack.drivers.storage.base import (
    GIB,
    Extent,
    ImageFormat,
    ImageInfo,
    SnapshotInfo,
    VolumeInfo,
)
from altostack.drivers.storage.ceph_cluster import rados, rbd  # None when not installed

BASE_SNAP = "base"
SNAP_INDEX = "alto.snapshots"
COPY_CHUNK = 4 << 20
FEATURES = 0
SNAP_FLAGS = 0
"""Snapshots skip the quiesce handshake: no librbd client here runs a quiesce hook (QEMU
does not), and the handshake costs ~1 s per snapshot. Crash-consistent, as promised."""
if rbd is not None:
    FEATURES = (
        rbd.RBD_FEATURE_LAYERING
        | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        | rbd.RBD_FEATURE_OBJECT_MAP
        | rbd.RBD_FEATURE_FAST_DIFF
        | rbd.RBD_FEATURE_DEEP_FLATTEN
    )
    SNAP_FLAGS = rbd.RBD_SNAP_CREATE_SKIP_QUIESCE


def vol_name(volume_id: str) -> str:
    return f"vol.{volume_id}"


def img_name(image_id: str) -> str:
    return f"img.{image_id}"


def tmp_name(object_id: str) -> str:
    return f"tmp.{object_id}.{secrets.token_hex(4)}"


def is_hidden(snap_name: str) -> bool:
    return snap_name.startswith(".")


def _user_namespace(snap: dict[str, Any]) -> bool:
    """A snapshot someone made (not one in the snapshot trash, waiting for its clones)."""
    return int(snap.get("namespace", 0)) == 0


@dataclass(frozen=True)
class StoredImage:
    info: ImageInfo
    problem: str | None


class RbdPool:
    """Every blocking step of the driver, on one ``Ioctx`` (thread-safe in librados)."""

    def __init__(self, ioctx: Any, pool_label: str, client_instance: int = -1) -> None:
        self.ioctx = ioctx
        self.client_instance = client_instance
        """This connection's id among an image's watchers (our own open is not "in use")."""
        self.rbd = rbd.RBD()
        self.label = pool_label
        """``pool`` or ``pool/namespace``, for ``VolumeInfo.backing``."""

    # -- images of RBD ---------------------------------------------------------------------

    @contextlib.contextmanager
    def open(
        self, name: str, *, read_only: bool = False, snapshot: str | None = None
    ) -> Iterator[Any]:
        image = rbd.Image(self.ioctx, name, snapshot=snapshot, read_only=read_only)
        try:
            yield image
        finally:
            image.close()

    def exists(self, name: str) -> bool:
        try:
            with self.open(name, read_only=True):
                return True
        except rbd.ImageNotFound:
            return False

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.rbd.list(self.ioctx) if n.startswith(prefix))

    def create(self, name: str, size: int) -> None:
        self.rbd.create(self.ioctx, name, size, old_format=False, features=FEATURES)

    def clone(self, parent: str, snap: str, child: str) -> None:
        self.rbd.clone(self.ioctx, parent, snap, self.ioctx, child, features=FEATURES)

    def rename(self, src: str, dest: str) -> None:
        self.rbd.rename(self.ioctx, src, dest)

    def resize(self, name: str, size: int) -> None:
        with self.open(name) as image:
            if image.size() != size:
                image.resize(size)

    def remove_quietly(self, name: str) -> None:
        """Remove a half-made image and its snapshots (clean-up path: never raises)."""
        with contextlib.suppress(Exception), self.open(name) as image:
            for snap in list(image.list_snaps()):
                with contextlib.suppress(Exception):
                    if image.is_protected_snap(snap["name"]):
                        image.unprotect_snap(snap["name"])
                    image.remove_snap(snap["name"])
        with contextlib.suppress(Exception):
            self.rbd.remove(self.ioctx, name)

    def purge_stale_temps(self, older_than: float = 3600.0) -> None:
        """Half-made images a killed agent left behind (only old ones: not in progress)."""
        cutoff = time.time() - older_than
        for name in self.names("tmp."):
            with contextlib.suppress(Exception):
                with self.open(name, read_only=True) as image:
                    created = image.create_timestamp().replace(tzinfo=UTC).timestamp()
                if created < cutoff:
                    self.remove_quietly(name)

    # -- volumes ---------------------------------------------------------------------------

    def volume(self, volume_id: str) -> VolumeInfo | None:
        try:
            with self.open(vol_name(volume_id), read_only=True) as image:
                return self._volume_info(volume_id, image)
        except rbd.ImageNotFound:
            return None

    def volume_or_raise(self, volume_id: str) -> VolumeInfo:
        info = self.volume(volume_id)
        if info is None:
            raise VolumeNotFound(volume_id)
        return info

    def _volume_info(self, volume_id: str, image: Any) -> VolumeInfo:
        backing = None
        with contextlib.suppress(rbd.ImageNotFound):
            parent = image.get_parent_image_spec()
            space = parent.get("pool_namespace") or ""
            where = f"{parent['pool_name']}/{space}/" if space else f"{parent['pool_name']}/"
            backing = f"{where}{parent['image_name']}@{parent['snap_name']}"
        return VolumeInfo(volume_id, image.size() // GIB, _own_bytes(image), backing)

    def volumes(self) -> list[VolumeInfo]:
        found = []
        for name in self.names("vol."):
            info = self.volume(name.removeprefix("vol."))
            if info is not None:
                found.append(info)
        return found

    def delete_volume(self, volume_id: str, force: bool, check: Callable[[], None]) -> bool:
        """Delete the volume; False when it was missing. Trashes it when clones remain."""
        name = vol_name(volume_id)
        try:
            image_cm = self.open(name)
            image = image_cm.__enter__()
        except rbd.ImageNotFound:
            return False
        try:
            snaps = [s["name"] for s in image.list_snaps() if _user_namespace(s)]
            user = sorted(s for s in snaps if not is_hidden(s))
            if user and not force:
                raise InvalidState(
                    "snapshotted",
                    "without snapshots",
                    resource_id=volume_id,
                    message=f"volume {volume_id} has {len(user)} snapshot(s) "
                    f"({', '.join(user)}); delete them first or force the delete",
                )
            watchers = [w for w in image.watchers_list() if w.get("id") != self.client_instance]
            if watchers:
                addresses = ", ".join(str(w.get("addr")) for w in watchers)
                raise InvalidState(
                    "in use",
                    "not in use by a running VM",
                    resource_id=volume_id,
                    message=f"volume {volume_id} is open by {addresses}",
                )
            check()
            for snap in snaps:
                image.remove_snap(snap)  # with clones: into the snapshot trash (clone v2)
        finally:
            image_cm.__exit__(None, None, None)
        self.index_remove(user)
        parent = _parent(image_name=name, pool=self)
        try:
            self.rbd.remove(self.ioctx, name)
        except (rbd.ImageHasSnapshots, rbd.ImageBusy, rbd.InvalidArgument):
            self.rbd.trash_move(self.ioctx, name, 0)  # clones still read through it
        if parent is not None and parent[1].startswith(".clone."):
            self._drop_clone_parent(*parent)
        return True

    def _drop_clone_parent(self, parent: str, snap: str) -> None:
        """The hidden snapshot a deleted clone was made from, unless others use it."""
        with contextlib.suppress(Exception), self.open(parent) as image:
            if not _has_children(image, snap):
                image.remove_snap(snap)

    def collect_trash(self) -> None:
        """Remove trashed images nothing depends on any more (clone v2 parents).

        Repeated while a pass removes something: removing a trashed volume can free the
        trashed image it was cloned from.
        """
        while any([self._collect(entry["id"]) for entry in list(self.rbd.trash_list(self.ioctx))]):
            pass

    def _collect(self, image_id: str) -> bool:
        """Remove one trashed image if no clone reads through it; whether it was removed."""
        try:
            with rbd.Image(self.ioctx, image_id=image_id) as image:
                for snap in list(image.list_snaps()):
                    if not _user_namespace(snap) or _has_children(image, snap["name"]):
                        continue
                    if image.is_protected_snap(snap["name"]):
                        image.unprotect_snap(snap["name"])
                    image.remove_snap(snap["name"])
                if list(image.list_snaps()):
                    return False  # a clone still reads through it
            self.rbd.trash_remove(self.ioctx, image_id, force=True)
        except Exception:  # collected by a later delete
            return False
        return True

    def grow(self, volume_id: str, size_gib: int, check: Callable[[], None]) -> None:
        with self.open(vol_name(volume_id)) as image:
            current = image.size() // GIB
            if size_gib < current:
                raise InvalidState(
                    f"{current} GiB",
                    f"at most {size_gib} GiB",
                    resource_id=volume_id,
                    message=f"volume {volume_id} is {current} GiB; volumes only grow, "
                    f"not to {size_gib} GiB",
                )
            if size_gib != current:
                check()
                image.resize(size_gib * GIB)

    # -- data ------------------------------------------------------------------------------

    def read(self, volume_id: str, offset: int, length: int, check: Callable[[], None]) -> bytes:
        with self._volume_image(volume_id, read_only=True) as image:
            _in_bounds(volume_id, image.size(), offset, length)
            check()
            if length == 0:
                return b""
            data: bytes = image.read(offset, length)
            return data + bytes(length - len(data))

    def write(self, volume_id: str, offset: int, data: bytes, check: Callable[[], None]) -> None:
        with self._volume_image(volume_id) as image:
            _in_bounds(volume_id, image.size(), offset, len(data))
            check()
            if data:
                image.write(data, offset)
                image.flush()

    def allocated_extents(self, volume_id: str) -> list[Extent]:
        with self._volume_image(volume_id, read_only=True) as image:
            return _extents(image, include_parent=True)

    @contextlib.contextmanager
    def _volume_image(self, volume_id: str, *, read_only: bool = False) -> Iterator[Any]:
        try:
            image_cm = self.open(vol_name(volume_id), read_only=read_only)
            image = image_cm.__enter__()
        except rbd.ImageNotFound as exc:
            raise VolumeNotFound(volume_id) from exc
        try:
            yield image
        finally:
            image_cm.__exit__(None, None, None)

    # -- snapshots -------------------------------------------------------------------------

    def index_get(self, snap_id: str) -> dict[str, Any] | None:
        with rados.ReadOpCtx() as op:
            values, _ = self.ioctx.get_omap_vals_by_keys(op, (snap_id,))
            try:
                self.ioctx.operate_read_op(op, SNAP_INDEX)
            except rados.ObjectNotFound:
                return None
            for _, value in values:
                record: dict[str, Any] = json.loads(value)
                return record
        return None

    def index_all(self) -> dict[str, dict[str, Any]]:
        with rados.ReadOpCtx() as op:
            values, _ = self.ioctx.get_omap_vals(op, "", "", -1)
            try:
                self.ioctx.operate_read_op(op, SNAP_INDEX)
            except rados.ObjectNotFound:
                return {}
            return {key: json.loads(value) for key, value in values}

    def index_put(self, snap_id: str, record: dict[str, Any]) -> None:
        with rados.WriteOpCtx() as op:
            self.ioctx.set_omap(op, (snap_id,), (json.dumps(record).encode(),))
            self.ioctx.operate_write_op(op, SNAP_INDEX)

    def index_remove(self, snap_ids: list[str]) -> None:
        if not snap_ids:
            return
        with rados.WriteOpCtx() as op:
            self.ioctx.remove_omap_keys(op, tuple(snap_ids))
            with contextlib.suppress(rados.ObjectNotFound):
                self.ioctx.operate_write_op(op, SNAP_INDEX)

    def snapshot_names(self, volume_id: str) -> set[str] | None:
        """The volume's user snapshot names; None when the volume is missing."""
        try:
            with self.open(vol_name(volume_id), read_only=True) as image:
                return {
                    s["name"]
                    for s in image.list_snaps()
                    if _user_namespace(s) and not is_hidden(s["name"])
                }
        except rbd.ImageNotFound:
            return None

    def snapshot(self, snap_id: str) -> SnapshotInfo | None:
        """The snapshot if its index entry points at a volume that really has it."""
        record = self.index_get(snap_id)
        if record is None:
            return None
        names = self.snapshot_names(str(record["volume_id"]))
        if names is None or snap_id not in names:
            return None
        return _snapshot_info(snap_id, record)

    def snapshots(self, volume_id: str | None) -> list[SnapshotInfo]:
        records = self.index_all()
        owners = {str(r["volume_id"]) for r in records.values()}
        if volume_id is not None:
            owners &= {volume_id}
        found = []
        for owner in owners:
            names = self.snapshot_names(owner) or set()
            found += [
                _snapshot_info(snap_id, r)
                for snap_id, r in records.items()
                if r["volume_id"] == owner and snap_id in names
            ]
        return sorted(found, key=lambda s: s.id)

    def create_snapshot(
        self, volume_id: str, snap_id: str, check: Callable[[], None]
    ) -> SnapshotInfo:
        with self._volume_image(volume_id) as image:
            existing = self.snapshot(snap_id)
            if existing is not None:
                if existing.volume_id == volume_id:
                    return existing
                raise InvalidSpec(
                    f"snapshot id {snap_id} is already used for volume {existing.volume_id}"
                )
            record = {
                "volume_id": volume_id,
                "size_gib": image.size() // GIB,
                "created_at": datetime.now(UTC).isoformat(),
            }
            self.index_put(snap_id, record)
            try:
                check()
                if snap_id in {s["name"] for s in image.list_snaps() if _user_namespace(s)}:
                    image.remove_snap(snap_id)  # left over from an interrupted create
                image.create_snap(snap_id, SNAP_FLAGS)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.index_remove([snap_id])
                raise
            return _snapshot_info(snap_id, record)

    def delete_snapshot(self, volume_id: str, snap_id: str, check: Callable[[], None]) -> None:
        names = self.snapshot_names(volume_id)
        if names is not None and snap_id in names:
            check()
            with self.open(vol_name(volume_id)) as image:
                image.remove_snap(snap_id)  # clones keep it in the snapshot trash
        self.index_remove([snap_id])

    def rollback(self, volume_id: str, snap_id: str, check: Callable[[], None]) -> VolumeInfo:
        self.volume_or_raise(volume_id)
        snap = self.snapshot(snap_id)
        if snap is None:
            raise SnapshotNotFound(snap_id)
        if snap.volume_id != volume_id:
            raise InvalidSpec(f"snapshot {snap_id} is of volume {snap.volume_id}, not {volume_id}")
        check()
        with self.open(vol_name(volume_id)) as image:
            image.rollback_to_snap(snap_id)  # data and size
            return self._volume_info(volume_id, image)

    # -- images ----------------------------------------------------------------------------

    def image(self, image_id: str) -> StoredImage | None:
        try:
            with self.open(img_name(image_id), read_only=True) as image:
                meta = {key: _metadata(image, key) for key in METADATA_KEYS}
        except rbd.ImageNotFound:
            return None
        fmt: ImageFormat = meta["alto.format"] or "raw"  # type: ignore[assignment]
        info = ImageInfo(
            image_id,
            fmt,
            int(meta["alto.virtual_size"] or 0),
            int(meta["alto.size"] or 0),
            meta["alto.sha256"],
        )
        return StoredImage(info, meta.get("alto.problem") or None)

    def image_or_raise(self, image_id: str) -> StoredImage:
        found = self.image(image_id)
        if found is None:
            raise ImageNotFound(image_id)
        return found

    def images(self) -> list[ImageInfo]:
        found = []
        for name in self.names("img."):
            stored = self.image(name.removeprefix("img."))
            if stored is not None:
                found.append(stored.info)
        return found

    def store_image(
        self, image_id: str, stored: StoredImage, raw: BinaryIO | None, check: Callable[[], None]
    ) -> None:
        """Write the image's raw data (sparse) into a new RBD image, snapshot it, publish it."""
        tmp = tmp_name(image_id)
        size = stored.info.virtual_size_bytes if raw is not None else 0
        self.create(tmp, size)
        try:
            with self.open(tmp) as image:
                if raw is not None:
                    _copy_sparse(raw, image)
                meta = {
                    "alto.format": stored.info.format,
                    "alto.virtual_size": str(stored.info.virtual_size_bytes),
                    "alto.size": str(stored.info.size_bytes),
                    "alto.sha256": stored.info.sha256,
                    "alto.problem": stored.problem or "",
                }
                for key, value in meta.items():
                    image.metadata_set(key, value)
                if raw is not None:
                    image.flush()
                    image.create_snap(BASE_SNAP, SNAP_FLAGS)
                    image.protect_snap(BASE_SNAP)
            check()
            self.rename(tmp, img_name(image_id))
        except BaseException:
            self.remove_quietly(tmp)
            raise

    def delete_image(self, image_id: str, check: Callable[[], None]) -> bool:
        name = img_name(image_id)
        if not self.exists(name):
            return False
        check()
        self.rbd.trash_move(self.ioctx, name, 0)  # removed by collect_trash once unused
        return True

    # -- pool ------------------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(allocated, provisioned) bytes of the volumes and images here, trash included."""
        allocated = provisioned = 0
        for name in self.names("vol.") + self.names("img.") + self.names("tmp."):
            with contextlib.suppress(rbd.ImageNotFound), self.open(name, read_only=True) as image:
                allocated += _usage_with_snapshots(image)
                if name.startswith("vol."):
                    provisioned += image.size()
        for entry in list(self.rbd.trash_list(self.ioctx)):
            with (
                contextlib.suppress(rbd.ImageNotFound),
                rbd.Image(self.ioctx, image_id=entry["id"], read_only=True) as image,
            ):
                allocated += _usage_with_snapshots(image)
        return allocated, provisioned

    # -- export ----------------------------------------------------------------------------

    def pin(self, volume_id: str, check: Callable[[], None]) -> tuple[str, int, list[Extent]]:
        """A hidden snapshot of the volume now: (its name, size, extents holding data)."""
        snap = f".export.{secrets.token_hex(4)}"
        with self._volume_image(volume_id) as image:
            check()
            image.create_snap(snap, SNAP_FLAGS)
        with self.open(vol_name(volume_id), snapshot=snap, read_only=True) as image:
            return snap, image.size(), _extents(image, include_parent=True)

    def read_pinned(self, volume_id: str, snap: str, offset: int, length: int) -> bytes:
        with self.open(vol_name(volume_id), snapshot=snap, read_only=True) as image:
            data: bytes = image.read(offset, length)
            return data

    def unpin(self, volume_id: str, snap: str) -> None:
        with contextlib.suppress(Exception), self.open(vol_name(volume_id)) as image:
            image.remove_snap(snap)


def _in_bounds(volume_id: str, size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise InvalidSpec(f"I/O at {offset}+{length} is outside volume {volume_id} ({size} bytes)")


def _parent(image_name: str, pool: RbdPool) -> tuple[str, str] | None:
    """(image name, snapshot) the image was cloned from, when it is a live image here."""
    with contextlib.suppress(Exception), pool.open(image_name, read_only=True) as image:
        spec = image.get_parent_image_spec()
        return str(spec["image_name"]), str(spec["snap_name"])
    return None


METADATA_KEYS = ("alto.format", "alto.virtual_size", "alto.size", "alto.sha256", "alto.problem")


def _metadata(image: Any, key: str) -> str:
    try:
        return str(image.metadata_get(key))
    except KeyError:
        return ""


def _has_children(image: Any, snap: str) -> bool:
    image.set_snap(snap)
    try:
        return bool(list(image.list_children2()))
    finally:
        image.set_snap(None)


def _snapshot_info(snap_id: str, record: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        snap_id,
        str(record["volume_id"]),
        int(record["size_gib"]),
        datetime.fromisoformat(str(record["created_at"])),
    )


def _extents(image: Any, *, include_parent: bool) -> list[Extent]:
    """Byte ranges holding data, merged (``rbd diff``)."""
    found: list[Extent] = []

    def seen(offset: int, length: int, exists: bool) -> None:
        if not exists:
            return
        if found and found[-1][0] + found[-1][1] == offset:
            found[-1] = (found[-1][0], found[-1][1] + length)
        else:
            found.append((offset, length))

    image.diff_iterate(0, image.size(), None, seen, include_parent=include_parent)
    found.sort()
    return found


def _own_bytes(image: Any, from_snapshot: str | None = None) -> int:
    """Bytes of whole RADOS objects this image (not its parent) holds (``rbd du``)."""
    total = 0

    def seen(offset: int, length: int, exists: bool) -> None:
        nonlocal total
        if exists:
            total += length

    image.diff_iterate(
        0, image.size(), from_snapshot, seen, include_parent=False, whole_object=True
    )
    return total


def _usage_with_snapshots(image: Any) -> int:
    """What the image and its snapshots hold, each snapshot counted for what it adds."""
    total, previous = 0, None
    for snap in list(image.list_snaps()):
        if not _user_namespace(snap):
            continue  # counted with the image it was taken of, until it goes
        with contextlib.suppress(Exception):
            image.set_snap(snap["name"])
            total += _own_bytes(image, previous)
            previous = snap["name"]
    image.set_snap(None)
    return total + _own_bytes(image, previous)


def _copy_sparse(raw: BinaryIO, image: Any) -> None:
    """The file's data regions into the image; holes and zero chunks are not written."""
    fd = raw.fileno()
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        end = os.lseek(fd, pos, os.SEEK_HOLE)
        while pos < end:
            chunk = os.pread(fd, min(COPY_CHUNK, end - pos), pos)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                image.write(chunk, pos)
            pos += len(chunk)
