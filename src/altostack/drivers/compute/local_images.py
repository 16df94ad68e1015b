"""Base images on one host: ``<directory>/<image_id>.qcow2``, each stored once.

The ``qemu`` driver makes every root disk a qcow2 overlay on one of these. Images arrive
here by :meth:`LocalImageCache.add` (a hard link or a copy of a local file, checksummed),
or on first use by :meth:`LocalImageCache.ensure` from an :class:`ImageSource` (the
image service: a download, or on the all-in-one a file of its image store), verified
against the image's SHA-256 and converted to qcow2 when it is raw or vmdk. A base image
must never change while overlays use it: nothing here writes to one, and new content
needs a new id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from altostack.drivers import tools
from altostack.drivers.errors import BackendFailure, ImageNotFound, InvalidSpec

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_id(image_id: str) -> None:
    if not _ID.match(image_id):
        raise InvalidSpec(f"invalid image id {image_id!r}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


async def qemu_img_info(path: Path) -> dict[str, object]:
    """``qemu-img info --output=json`` of ``path`` (``-U``: it may be in use)."""
    result = await tools.run(["qemu-img", "info", "-U", "--output=json", str(path)], timeout=60)
    if result.returncode != 0:
        raise BackendFailure(f"qemu-img info {path}: {result.stderr}")
    info = json.loads(result.stdout)
    if not isinstance(info, dict):
        raise BackendFailure(f"qemu-img info {path}: unexpected output")
    return info


@dataclass(frozen=True)
class FetchedImage:
    """What an :class:`ImageSource` wrote, and what the image service says it must be."""

    sha256: str
    format: str
    """``qcow2``, ``raw`` or ``vmdk`` (the image service's detection)."""


class ImageSource(Protocol):
    """Where a host gets base images it does not have yet (the image service)."""

    async def fetch(self, image_id: str, target: Path) -> FetchedImage:
        """Write the image's bytes to ``target``; ``ImageNotFound`` when there is none."""
        ...


class LocalImageCache:
    """A directory of base images keyed by image id, filled from ``source`` on demand."""

    def __init__(self, directory: Path, source: ImageSource | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.source = source
        self._fetching: dict[str, asyncio.Lock] = {}

    def _file(self, image_id: str) -> Path:
        _check_id(image_id)
        return self.directory / f"{image_id}.qcow2"

    def has(self, image_id: str) -> bool:
        return self._file(image_id).is_file()

    def path(self, image_id: str) -> Path:
        """The image's file; ``ImageNotFound`` when it is not on this host."""
        path = self._file(image_id)
        if not path.is_file():
            raise ImageNotFound(image_id, f"image {image_id!r} is not on this host")
        return path

    def list(self) -> list[str]:
        return sorted(p.name.removesuffix(".qcow2") for p in self.directory.glob("*.qcow2"))

    def add(self, image_id: str, source: Path, *, sha256: str | None = None) -> Path:
        """Store ``source`` (a qcow2 file) as ``image_id``: a hard link when possible.

        Adding the same content again is a no-op; other content under an existing id is
        ``InvalidSpec`` (base images never change under their overlays).
        """
        target = self._file(image_id)
        digest = sha256_file(source)
        if sha256 is not None and digest != sha256.lower():
            raise BackendFailure(f"checksum mismatch for {source}: {digest} != {sha256}")
        if target.exists():
            if sha256_file(target) == digest:
                return target
            raise InvalidSpec(f"image {image_id!r} exists here with other content")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target

    async def ensure(self, image_id: str) -> Path:
        """The image's file, fetched once from the source if this host lacks it.

        The download is checked against the image service's SHA-256 before it is used
        (a mismatch is ``BackendFailure`` and keeps nothing); raw and vmdk images are
        converted to qcow2 once, here. Concurrent calls for one image fetch it once.
        """
        target = self._file(image_id)
        if target.is_file() or self.source is None:
            return self.path(image_id)
        async with self._fetching.setdefault(image_id, asyncio.Lock()):
            if target.is_file():
                return target
            part = self.directory / f".{image_id}.{os.getpid()}.part"
            converted = self.directory / f".{image_id}.{os.getpid()}.convert"
            try:
                fetched = await self.source.fetch(image_id, part)
                digest = await asyncio.to_thread(sha256_file, part)
                if digest != fetched.sha256.lower():
                    raise BackendFailure(
                        f"image {image_id} arrived with SHA-256 {digest}, the image service "
                        f"says {fetched.sha256}: not used"
                    )
                if fetched.format != "qcow2":
                    await _convert(part, fetched.format, converted)
                    part.unlink()
                    os.replace(converted, part)
                os.chmod(part, 0o444)
                os.replace(part, target)
            finally:
                for leftover in (part, converted):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        return target

    def remove(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(image_id).unlink()

    async def virtual_size(self, image_id: str) -> int:
        """The image's virtual disk size in bytes."""
        info = await qemu_img_info(self.path(image_id))
        size = info.get("virtual-size")
        if not isinstance(size, int):
            raise BackendFailure(f"qemu-img info of image {image_id!r} has no virtual size")
        return size


async def _convert(source: Path, fmt: str, target: Path) -> None:
    """``qemu-img convert`` a raw or vmdk image to qcow2 (base images are qcow2 here)."""
    if fmt not in ("raw", "vmdk"):
        raise InvalidSpec(f"image format {fmt!r} is not supported (qcow2, raw, vmdk)")
    argv = ["qemu-img", "convert", "-q", "-f", fmt, "-O", "qcow2", str(source), str(target)]
    result = await tools.run(argv, timeout=1800)
    if result.returncode != 0:
        raise BackendFailure(f"qemu-img convert of {source.name}: {result.stderr}")
