"""Sparse, copy-on-write bytes for the sim storage backend.

A volume is a map of block index → immutable ``bytes`` of its own, over a read-only parent
map (the data of the image, snapshot or volume it was made from, pinned at creation).
Because blocks are immutable, copying a map copies references only: a snapshot or a
clone costs one dict copy and shares every block until one side writes it, which is
exactly copy-on-write. Absent blocks read as zeros, so a 1 TiB blank volume costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

EMPTY: Mapping[int, bytes] = MappingProxyType({})


class BlockStore:
    """The data of one volume: ``own`` blocks written since creation over ``parent``."""

    def __init__(
        self,
        block_size: int,
        *,
        parent: Mapping[int, bytes] = EMPTY,
        own: dict[int, bytes] | None = None,
    ) -> None:
        self.block_size = block_size
        self.parent = parent
        self.own: dict[int, bytes] = own if own is not None else {}
        self._zero = bytes(block_size)

    def block(self, index: int) -> bytes:
        """One whole block (zeros when never written)."""
        found = self.own.get(index)
        if found is None:
            found = self.parent.get(index, self._zero)
        return found

    def read(self, offset: int, length: int) -> bytes:
        bs = self.block_size
        out = bytearray()
        first, last = offset // bs, (offset + length - 1) // bs
        for index in range(first, last + 1):
            out += self.block(index)
        start = offset - first * bs
        return bytes(out[start : start + length])

    def blocks_to_allocate(self, offset: int, length: int) -> int:
        """How many new own blocks a write of ``length`` at ``offset`` would create."""
        if length == 0:
            return 0
        bs = self.block_size
        span = range(offset // bs, (offset + length - 1) // bs + 1)
        return sum(1 for index in span if index not in self.own)

    def write(self, offset: int, data: bytes) -> None:
        bs = self.block_size
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, bs)
            take = min(bs - within, len(data) - pos)
            if within == 0 and take == bs:
                self.own[index] = bytes(data[pos : pos + bs])
            else:
                block = bytearray(self.block(index))
                block[within : within + take] = data[pos : pos + take]
                self.own[index] = bytes(block)
            pos += take

    def flatten(self) -> dict[int, bytes]:
        """The merged view (parent then own): the parent map of a clone or export."""
        return {**self.parent, **self.own}

    def iter_blocks(self, count: int) -> Iterator[bytes]:
        """Blocks 0..count-1 in order, zeros where absent."""
        for index in range(count):
            yield self.block(index)


def blocks_from_stream_buffer(
    buffer: bytearray, block_size: int, first_index: int, into: dict[int, bytes]
) -> int:
    """Move whole blocks from the front of ``buffer`` into ``into`` (skipping zero blocks).

    Returns how many blocks were consumed; used while streaming an image in, so the
    stored image stays sparse like ``qemu-img convert`` makes it.
    """
    zero = bytes(block_size)
    count = len(buffer) // block_size
    for n in range(count):
        block = bytes(buffer[n * block_size : (n + 1) * block_size])
        if block != zero:
            into[first_index + n] = block
    del buffer[: count * block_size]
    return count
