"""Receiving an image upload for the ``local`` backend: streamed to disk, checked, made usable.

An uploaded image is untrusted input that QEMU will open on the host, so before any
volume may use it:

- its format is decided from its first bytes (:func:`detect_format`) and given to every
  tool explicitly (``-f``), never probed again: a raw upload that happens to look like
  another format is only ever read as raw bytes;
- a qcow2 or VMDK upload that names a backing file, an external data file or an extent
  outside itself is refused (``InvalidSpec``): opening it would read a host file (say
  ``/etc/shadow``) into a guest's disk;
- an encrypted image is refused (the pool holds no keys);
- a VMDK is converted to qcow2 once, so volumes have a format QEMU opens fast and
  writes never reach the original.

A qcow2/VMDK that ``qemu-img`` cannot open at all (truncated, corrupt) is still recorded,
with the reason: the contract requires the import to succeed and report the header's
format and size, and no volume can be made from it (``InvalidSpec`` with QEMU's words).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altostack.drivers.errors import DriverError, InvalidSpec
from altostack.drivers.storage import qemu_tools
from altostack.drivers.storage.base import ImageFormat
from altostack.drivers.storage.formats import HEADER_BYTES, detect_format


@dataclass(frozen=True)
class Upload:
    """A stream received into ``path``: its length, sha256 and first bytes."""

    path: Path
    size: int
    sha256: str
    head: bytes


async def receive(chunks: AsyncIterator[bytes], path: Path) -> Upload:
    """Write ``chunks`` to ``path`` (created here), hashing as it goes; never all in memory.

    Chunks of zeros become holes, so a raw disk image uses only the space of its data.

    The caller removes ``path`` if this raises (the stream's own error propagates).
    """
    hasher = hashlib.sha256()
    head = b""
    size = 0
    with path.open("xb") as f:
        async for chunk in chunks:
            if not chunk:
                continue
            hasher.update(chunk)
            if len(head) < HEADER_BYTES:
                head = (head + chunk)[:HEADER_BYTES]
            if chunk.count(0) == len(chunk):
                f.seek(len(chunk), os.SEEK_CUR)  # all zeros: leave a hole (raw disks have many)
            else:
                await asyncio.to_thread(f.write, chunk)
            size += len(chunk)
        f.truncate(size)  # a trailing hole still counts in the length
        await asyncio.to_thread(_sync, f.fileno())
    return Upload(path, size, hasher.hexdigest(), head)


async def file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A local file as an upload stream, read off the event loop."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


def _sync(fd: int) -> None:
    os.fsync(fd)


@dataclass(frozen=True)
class Inspected:
    """What an upload is: its format, virtual size, and whether QEMU can use it."""

    format: ImageFormat
    virtual_size: int
    problem: str | None
    """Why no volume can be made from it (QEMU cannot open it), or None."""


async def inspect(upload: Upload) -> Inspected:
    """The upload's format and size; ``InvalidSpec`` when it refers to other files."""
    fmt, virtual = detect_format(upload.head, upload.size)
    if fmt == "raw":
        return Inspected("raw", upload.size, None)
    try:
        data = await qemu_tools.info(str(upload.path), fmt=fmt)
    except DriverError as exc:
        return Inspected(fmt, virtual, exc.message)
    refuse_external_references(data, upload.path)
    size = data.get("virtual-size")
    return Inspected(fmt, size if isinstance(size, int) else virtual, None)


def refuse_external_references(data: dict[str, Any], path: Path) -> None:
    """``InvalidSpec`` if ``qemu-img info`` shows the image reading any other file.

    Encrypted images are refused too: no volume could be read without a key the pool
    does not have.
    """
    backing = data.get("backing-filename") or data.get("full-backing-filename")
    if backing:
        raise InvalidSpec(
            f"image refused: it declares a backing file ({backing!r}); upload a standalone "
            "image (qemu-img convert -O qcow2 flattens it)"
        )
    specific = data.get("format-specific")
    details = specific.get("data", {}) if isinstance(specific, dict) else {}
    if not isinstance(details, dict):
        return
    if details.get("data-file"):
        raise InvalidSpec(
            f"image refused: it declares an external data file ({details['data-file']!r}); "
            "upload a self-contained image"
        )
    if details.get("encrypt") or data.get("encrypted"):
        raise InvalidSpec("image refused: it is encrypted; upload an unencrypted image")
    for extent in details.get("extents") or ():
        name = extent.get("filename") if isinstance(extent, dict) else None
        if name is not None and Path(path.parent, name).absolute() != path.absolute():
            raise InvalidSpec(
                f"image refused: its VMDK extent {name!r} is outside the uploaded file; "
                "upload a monolithic (single-file) VMDK"
            )
