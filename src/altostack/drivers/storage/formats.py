"""Recognising disk image formats from their first bytes.

Real backends ask ``qemu-img info``; the sim (and a real backend's cheap pre-check) reads
the header: qcow2 and VMDK sparse extents carry a magic number and the virtual disk size,
anything else is taken as raw, whose virtual size is its length.
"""

from __future__ import annotations

from altostack.drivers.storage.base import ImageFormat

QCOW2_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
HEADER_BYTES = 512
"""How much of the start of an image :func:`detect_format` needs."""


def detect_format(head: bytes, total_size: int) -> tuple[ImageFormat, int]:
    """The format and virtual size (bytes) of an image starting with ``head``.

    qcow2: big-endian u64 size at offset 24. VMDK sparse extent: little-endian u64 capacity
    in 512-byte sectors at offset 12. A header too short to hold its size is taken as raw.
    """
    if head.startswith(QCOW2_MAGIC) and len(head) >= 32:
        return "qcow2", int.from_bytes(head[24:32], "big")
    if head.startswith(VMDK_MAGIC) and len(head) >= 20:
        return "vmdk", int.from_bytes(head[12:20], "little") * 512
    return "raw", total_size
