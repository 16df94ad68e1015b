"""Where image bytes live on the control plane: one file per image in the data directory.

Imports stream into a temporary file, hashing as they go, and are renamed into place only
when complete and verified, so a crash or a bad checksum never leaves a half image behind.
Hosts fetch base images from here (real storage backends cache them per host).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from altostack.domain.errors import InvalidRequest

QCOW2_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredImage:
    format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str


def detect(header: bytes, size: int) -> tuple[str, int]:
    """Format and virtual size from the first bytes (qcow2 header: size at offset 24)."""
    if header.startswith(QCOW2_MAGIC) and len(header) >= 32:
        return "qcow2", struct.unpack(">Q", header[24:32])[0]
    if header.startswith(VMDK_MAGIC) and len(header) >= 20:
        sectors = struct.unpack("<Q", header[12:20])[0]
        return "vmdk", sectors * 512
    return "raw", size


class ImageStore:
    def __init__(self, root: Path, max_bytes: int = 512 * 1024**3) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    async def put(
        self, image_id: str, chunks: AsyncIterator[bytes], expected_sha256: str | None
    ) -> StoredImage:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{image_id}.part"
        digest = hashlib.sha256()
        size = 0
        header = b""
        try:
            async with await anyio.open_file(tmp, "wb") as fh:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise InvalidRequest(f"image is larger than {self.max_bytes} bytes")
                    if len(header) < 512:
                        header += chunk[: 512 - len(header)]
                    digest.update(chunk)
                    await fh.write(chunk)
            sha = digest.hexdigest()
            if size == 0:
                raise InvalidRequest("the image is empty")
            if expected_sha256 and sha != expected_sha256.lower():
                raise InvalidRequest.for_field(
                    "checksum_sha256", f"expected {expected_sha256}, the data has {sha}"
                )
            fmt, virtual = detect(header, size)
            os.replace(tmp, self.path(image_id))
            return StoredImage(fmt, size, virtual, sha)
        finally:
            tmp.unlink(missing_ok=True)

    async def read(self, image_id: str) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.path(image_id), "rb") as fh:
            while chunk := await fh.read(CHUNK):
                yield chunk

    def delete(self, image_id: str) -> None:
        self.path(image_id).unlink(missing_ok=True)

    def exists(self, image_id: str) -> bool:
        return self.path(image_id).exists()
