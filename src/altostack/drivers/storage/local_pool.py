"""The on-disk layout of a ``local`` storage pool, and the small files that describe it.

::

    <pool>/volumes/<volume_id>.qcow2      a volume; its internal snapshots live inside it
    <pool>/snapshots/<snap_id>.json       which volume a snapshot id belongs to, its size
    <pool>/images/<image_id>.json         an image: format, sizes, sha256, its base file
    <pool>/bases/<sha256>.<raw|qcow2>     image data as volumes use it (read-only, shared)
    <pool>/tmp/                           work files; a file appears elsewhere only by rename

The files are the truth: a new driver over the same directory knows everything. A
snapshot is real when its volume's qcow2 snapshot table has it; its JSON only says where
to look (a JSON whose snapshot is missing is stale and ignored). An image exists while its
JSON does; its base file stays while any volume still uses it as a backing file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import struct
import time
from pathlib import Path
from typing import Any

from altostack.drivers.errors import InvalidSpec

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
QCOW2_MAGIC = b"QFI\xfb"


def check_id(kind: str, object_id: str) -> str:
    """``object_id`` if it is safe as a file name (no ``/``, no leading dot), else InvalidSpec."""
    if not _ID.match(object_id):
        raise InvalidSpec(f"invalid {kind} id {object_id!r}")
    return object_id


class PoolPaths:
    """Where each object of a pool lives."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.volumes = self.root / "volumes"
        self.snapshots = self.root / "snapshots"
        self.images = self.root / "images"
        self.bases = self.root / "bases"
        self.tmp = self.root / "tmp"
        for directory in (self.volumes, self.snapshots, self.images, self.bases, self.tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def purge_stale_temps(self, older_than: float = 3600.0) -> None:
        """Remove work files an earlier agent left behind (killed mid-create or mid-import).

        Only old ones: a file that young may belong to an operation still running.
        """
        cutoff = time.time() - older_than
        for path in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < cutoff:
                    path.unlink()

    def volume(self, volume_id: str) -> Path:
        return self.volumes / f"{check_id('volume', volume_id)}.qcow2"

    def snapshot(self, snap_id: str) -> Path:
        return self.snapshots / f"{check_id('snapshot', snap_id)}.json"

    def image(self, image_id: str) -> Path:
        return self.images / f"{check_id('image', image_id)}.json"

    def temp(self, label: str, suffix: str) -> Path:
        """A fresh name in ``tmp/``, never used before (created by whoever writes it)."""
        return self.tmp / f"{label}.{secrets.token_hex(6)}{suffix}"

    def volume_ids(self) -> list[str]:
        return sorted(p.name.removesuffix(".qcow2") for p in self.volumes.glob("[!.]*.qcow2"))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically and durably: readers see the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("w") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def allocated_bytes(path: Path) -> int:
    """Space the file really uses (sparse files use less than their length)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def qcow2_header(path: Path) -> tuple[int, str | None]:
    """(virtual size in bytes, backing file name as written) of a qcow2 file we made.

    Read from the header itself (big-endian: backing file offset u64 at 8, its length u32
    at 16, size u64 at 24) rather than through ``qemu-img info``: ``get_volume`` and every
    bounds check need it, and a subprocess for each would cost ~10 ms. Only for the pool's
    own volumes; uploaded files are examined by ``qemu-img``.
    """
    with path.open("rb") as f:
        head = f.read(32)
        if len(head) < 32 or not head.startswith(QCOW2_MAGIC):
            raise OSError(f"{path} is not a qcow2 file")
        backing_offset, backing_len = struct.unpack(">QI", head[8:20])
        (size,) = struct.unpack(">Q", head[24:32])
        backing = None
        if backing_offset and backing_len:
            f.seek(backing_offset)
            backing = f.read(backing_len).decode(errors="replace")
    return size, backing
