"""Agent commands that move a stopped VM's data to another host (cold migration).

The controller copies, piece by piece, what the source agent produces to the destination
agent: the root disk's changes over its image (a file the compute driver writes), and
the bytes of any local data volume (only its allocated extents). Pieces are at most
512 KiB (base64 in one JSON message, under NATS's 1 MiB default) and every command is
idempotent (a write names its offset, a produced file is reused), so a lost or repeated
message, or a resumed operation after a control-plane restart, converges. The receiving
side checks the whole file's size and SHA-256 before the VM is taken over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from altostack.agent.codec import status_to_dict
from altostack.agent.exports import MAX_READ, read_range
from altostack.drivers.compute.base import ComputeDriver, MigrationManifest
from altostack.drivers.compute.local_images import sha256_file
from altostack.drivers.errors import InvalidSpec, InvalidState
from altostack.drivers.storage.base import StorageDriver, VolumeSpec

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class Transfers:
    def __init__(self, compute: ComputeDriver, storage: StorageDriver | None) -> None:
        self.compute = compute
        self.storage = storage
        state_dir = getattr(compute, "state_dir", None)
        if isinstance(state_dir, Path):
            self.dir = state_dir / "transfers"
            self._private = False
        else:  # hosts without a state directory (the sim): a private temporary one
            self.dir = Path(tempfile.gettempdir()) / f"alto-transfers-{os.getpid()}-{id(self):x}"
            self._private = True

    def _tidy(self) -> None:
        """A private temporary directory goes once it holds nothing (none is left behind)."""
        if self._private:
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    def handlers(self) -> dict[str, Handler]:
        return {
            "export_root_changes": self.export_root_changes,
            "read_transfer": self.read,
            "write_transfer": self.write,
            "receive_stopped": self.receive_stopped,
            "drop_transfer": self.drop,
            "volume_extents": self.volume_extents,
            "read_volume": self.read_volume,
            "write_volume": self.write_volume,
        }

    def _file(self, d: dict[str, Any], suffix: str) -> Path:
        transfer_id = str(d.get("transfer_id", ""))
        if not TRANSFER_ID.fullmatch(transfer_id):
            raise InvalidSpec(f"{transfer_id!r} cannot name a transfer")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.dir / f"{transfer_id}.{suffix}"

    async def export_root_changes(self, d: dict[str, Any]) -> dict[str, Any]:
        path = self._file(d, "out")
        if not path.exists():  # made once: a retry serves the same bytes
            await self.compute.export_root_changes(str(d["vm_id"]), path)
        size, digest = await asyncio.to_thread(_digest, path)
        return {"size": size, "sha256": digest}

    async def read(self, d: dict[str, Any]) -> dict[str, Any]:
        path = self._file(d, "out")
        offset, length = _range(d)
        if not path.exists():
            raise InvalidState("absent", "exported", resource_id=str(d["transfer_id"]))
        data = await asyncio.to_thread(read_range, path, offset, length)
        return {"data": base64.b64encode(data).decode()}

    async def write(self, d: dict[str, Any]) -> dict[str, Any]:
        path = self._file(d, "in")
        data = base64.b64decode(str(d["data"]))
        offset, _ = _range({"offset": d["offset"], "length": max(len(data), 1)})
        await asyncio.to_thread(_write, path, offset, data)
        return {"written": len(data)}

    async def receive_stopped(self, d: dict[str, Any]) -> dict[str, Any]:
        path = self._file(d, "in")
        if not path.exists() and int(d["size"]) == 0:
            path.touch()
        if not path.exists():
            raise InvalidState("absent", "received", resource_id=str(d["transfer_id"]))
        size, digest = await asyncio.to_thread(_digest, path)
        if (size, digest) != (int(d["size"]), str(d["sha256"])):
            path.unlink()
            raise InvalidSpec(
                f"the copy of {d['vm_id']}'s root disk is damaged: {size} bytes, sha256 "
                f"{digest}; expected {d['size']} bytes, {d['sha256']}"
            )
        m = d["manifest"]
        manifest = MigrationManifest(str(m["vm_id"]), str(m["source_host"]), dict(m["data"]))
        status = await self.compute.receive_stopped(manifest, path)
        self._tidy()
        return {"status": status_to_dict(status)}

    async def drop(self, d: dict[str, Any]) -> dict[str, Any]:
        for suffix in ("out", "in"):
            with contextlib.suppress(FileNotFoundError):
                self._file(d, suffix).unlink()
        self._tidy()
        return {}

    # -- local data volumes ------------------------------------------------------------

    def _pool(self) -> StorageDriver:
        if self.storage is None:
            raise InvalidSpec("this host has no storage pool")
        return self.storage

    async def volume_extents(self, d: dict[str, Any]) -> dict[str, Any]:
        """The volume's size and the ranges that hold data (all else reads as zeros).
        ``create`` on the receiving side: make a blank volume of that size first."""
        pool = self._pool()
        volume_id = str(d["volume_id"])
        if d.get("create"):
            info = await pool.ensure_volume(VolumeSpec(volume_id, int(d["size_gib"])))
            return {"size_gib": info.size_gib, "extents": []}
        found = await pool.get_volume(volume_id)
        if found is None:
            raise InvalidState("absent", "present", resource_id=volume_id)
        extents = await pool.allocated_extents(volume_id)
        return {"size_gib": found.size_gib, "extents": [list(e) for e in extents]}

    async def read_volume(self, d: dict[str, Any]) -> dict[str, Any]:
        offset, length = _range(d)
        data = await self._pool().read(str(d["volume_id"]), offset, length)
        return {"data": base64.b64encode(data).decode()}

    async def write_volume(self, d: dict[str, Any]) -> dict[str, Any]:
        data = base64.b64decode(str(d["data"]))
        await self._pool().write(str(d["volume_id"]), int(d["offset"]), data)
        return {"written": len(data)}


def _range(d: dict[str, Any]) -> tuple[int, int]:
    offset, length = int(d["offset"]), int(d["length"])
    if offset < 0 or not 0 < length <= MAX_READ:
        raise InvalidSpec(f"{length} bytes at {offset}: at most {MAX_READ} at a time")
    return offset, length


def _write(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _digest(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path)


__all__ = ["Transfers"]
