"""A compact qcow2 (version 2) image of a volume, readable at any offset.

Exporting a VM's root disk as raw would ship its whole virtual size (mostly zeros); real
clouds make a qcow2 holding only the clusters with data, as ``qemu-img convert -O qcow2``
does. The layout is computed up front from the volume's allocated extents, so any byte
range of the image can be produced on demand (the controller pulls the image from the
agent in chunks, and a retried pull resumes anywhere) without a temporary file:

    cluster 0            header
    L1 table             one entry per 512 MiB of virtual size
    refcount table       and refcount blocks: every cluster of the file has refcount 1
    L2 tables            one per 512 MiB region holding data
    data clusters        the volume's allocated clusters, in guest order

QEMU reads it as is, and ``qemu-img check`` finds it clean (the tests run both when
``qemu-img`` is installed).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
MAGIC = b"QFI\xfb"
COPIED = 1 << 63  # refcount is exactly 1: QEMU may write in place
_L2_ENTRIES = CLUSTER // 8
_REFS_PER_BLOCK = CLUSTER // 2  # 16-bit refcounts (version 2)
_REF_ENTRIES = CLUSTER // 8

ReadGuest = Callable[[int, int], Awaitable[bytes]]


def _clusters(nbytes: int) -> int:
    return -(-nbytes // CLUSTER)


@dataclass(frozen=True)
class Qcow2Layout:
    """Where everything goes in the image of a ``virtual_size`` volume whose data lives in
    the guest clusters ``data`` (sorted indexes of 64 KiB clusters)."""

    virtual_size: int
    data: tuple[int, ...]

    @classmethod
    def from_extents(cls, virtual_size: int, extents: Sequence[tuple[int, int]]) -> Qcow2Layout:
        """The layout for a volume whose non-zero data is inside ``extents``."""
        last = _clusters(virtual_size)
        wanted: set[int] = set()
        for offset, length in extents:
            if length > 0:
                wanted.update(range(offset // CLUSTER, min(last, _clusters(offset + length))))
        return cls(virtual_size, tuple(sorted(wanted)))

    # -- geometry ----------------------------------------------------------------------
    @cached_property
    def l1_entries(self) -> int:
        return max(1, -(-_clusters(self.virtual_size) // _L2_ENTRIES))

    @cached_property
    def l2_tables(self) -> tuple[int, ...]:
        """The L1 indexes that have an L2 table (regions holding data)."""
        return tuple(sorted({c // _L2_ENTRIES for c in self.data}))

    @cached_property
    def _counts(self) -> tuple[int, int, int]:
        """(L1 clusters, refcount table clusters, refcount blocks); the refcount structures
        count themselves, hence the fixed point."""
        l1 = _clusters(self.l1_entries * 8)
        fixed = 1 + l1 + len(self.l2_tables) + len(self.data)
        blocks, table = 1, 1
        while True:
            total = fixed + blocks + table
            need_blocks = -(-total // _REFS_PER_BLOCK)
            need_table = -(-need_blocks // _REF_ENTRIES)
            if (need_blocks, need_table) == (blocks, table):
                return l1, table, blocks
            blocks, table = need_blocks, need_table

    @property
    def l1_offset(self) -> int:
        return CLUSTER

    @property
    def refcount_table_offset(self) -> int:
        return self.l1_offset + self._counts[0] * CLUSTER

    @property
    def refcount_blocks_offset(self) -> int:
        return self.refcount_table_offset + self._counts[1] * CLUSTER

    @property
    def l2_offset(self) -> int:
        return self.refcount_blocks_offset + self._counts[2] * CLUSTER

    @property
    def data_offset(self) -> int:
        return self.l2_offset + len(self.l2_tables) * CLUSTER

    @property
    def size(self) -> int:
        """The image's size in bytes."""
        return self.data_offset + len(self.data) * CLUSTER

    # -- metadata ----------------------------------------------------------------------
    @cached_property
    def metadata(self) -> bytes:
        """Every byte before the first data cluster."""
        out = bytearray(self.data_offset)
        _, table_clusters, blocks = self._counts
        struct.pack_into(
            ">4sIQIIQIIQQIIQ",
            out,
            0,
            MAGIC,
            2,  # version
            0,  # backing file offset
            0,  # backing file name length
            CLUSTER_BITS,
            self.virtual_size,
            0,  # no encryption
            self.l1_entries,
            self.l1_offset,
            self.refcount_table_offset,
            table_clusters,
            0,  # snapshots
            0,
        )
        l2_at = {region: self.l2_offset + i * CLUSTER for i, region in enumerate(self.l2_tables)}
        for region, offset in l2_at.items():
            struct.pack_into(">Q", out, self.l1_offset + region * 8, offset | COPIED)
        for n, cluster in enumerate(self.data):
            region, index = divmod(cluster, _L2_ENTRIES)
            entry = (self.data_offset + n * CLUSTER) | COPIED
            struct.pack_into(">Q", out, l2_at[region] + index * 8, entry)
        table, first_block = self.refcount_table_offset, self.refcount_blocks_offset
        for b in range(blocks):
            struct.pack_into(">Q", out, table + b * 8, first_block + b * CLUSTER)
        for c in range(self.size // CLUSTER):
            struct.pack_into(">H", out, self.refcount_blocks_offset + c * 2, 1)
        return bytes(out)

    def guest_cluster(self, file_cluster: int) -> int:
        """The guest cluster stored in a data cluster of the file."""
        return self.data[file_cluster - self.data_offset // CLUSTER]

    async def read(self, read_guest: ReadGuest, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the image (clipped at its end);
        ``read_guest(offset, length)`` reads the volume."""
        end = min(offset + length, self.size)
        out = bytearray()
        pos = offset
        while pos < end:
            if pos < self.data_offset:
                take = min(end, self.data_offset) - pos
                out += self.metadata[pos : pos + take]
            else:
                file_cluster, within = divmod(pos, CLUSTER)
                take = min(end - pos, CLUSTER - within)
                guest = self.guest_cluster(file_cluster) * CLUSTER + within
                # The last cluster of an odd-sized volume is padded with zeros.
                real = max(0, min(take, self.virtual_size - guest))
                out += await read_guest(guest, real) if real else b""
                out += bytes(take - real)
            pos += take
        return bytes(out)
