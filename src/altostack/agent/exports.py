"""Exporting a stopped VM's root disk as a compact qcow2 image, pulled in chunks.

``export_disk`` pins the disk and answers the image's size; ``read_export`` returns any
byte range of the image (base64, so it fits a JSON bus message: the controller asks for
at most 512 KiB at a time, under NATS's 1 MiB default); ``end_export`` drops the pin.
Every step is idempotent, and the image is computed from the pin alone, so a retried or
resumed pull, even after an agent restart, reads the same bytes.

Two ways to pin, by where the host keeps root disks: in a storage pool, a copy-on-write
clone whose allocated extents are laid out as qcow2 on the fly; outside one (the qemu
driver's overlay chains), a standalone qcow2 file the compute driver converts once.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from altostack.drivers.compute.base import ComputeDriver
from altostack.drivers.errors import InvalidSpec, InvalidState, VmNotFound
from altostack.drivers.storage import qemu_tools
from altostack.drivers.storage.base import GIB, StorageDriver, VolumeSpec, root_volume_id
from altostack.drivers.storage.qcow2 import Qcow2Layout

MAX_READ = 512 * 1024


class DiskExports:
    def __init__(self, compute: ComputeDriver, storage: StorageDriver | None) -> None:
        self.compute = compute
        self.storage = storage
        self._layouts: dict[str, Qcow2Layout] = {}
        self._files: dict[str, Path] = {}

    async def begin(self, d: dict[str, Any]) -> dict[str, Any]:
        vm_id, export_id = str(d["vm_id"]), str(d["export_id"])
        if self.storage is None or await self._root_outside_pool(vm_id, export_id):
            return await self._begin_file(vm_id, export_id)
        storage = self.storage
        if await storage.get_volume(export_id) is None:
            # Pin only a stopped VM's disk: a running guest's disk is not consistent.
            status = await self.compute.get_vm(vm_id)
            if status is None:
                raise VmNotFound(vm_id)
            if status.state != "stopped":
                raise InvalidState(
                    status.state,
                    "stopped",
                    resource_id=vm_id,
                    message=f"{vm_id} is {status.state}; only a stopped VM's disk is exported",
                )
            root = await storage.get_volume(root_volume_id(vm_id))
            assert root is not None  # _root_outside_pool said so
            await storage.ensure_volume(
                VolumeSpec(export_id, root.size_gib, source=("volume", root.id))
            )
        layout = await self._layout(export_id)
        return _answer(export_id, layout.size, layout.virtual_size, len(layout.data) * 65536)

    async def _root_outside_pool(self, vm_id: str, export_id: str) -> bool:
        assert self.storage is not None
        if await self.storage.get_volume(export_id) is not None:
            return False
        return await self.storage.get_volume(root_volume_id(vm_id)) is None

    async def _begin_file(self, vm_id: str, export_id: str) -> dict[str, Any]:
        path = await self.compute.export_root_disk(vm_id, export_id)
        self._files[export_id] = path
        info = await qemu_tools.info(str(path), fmt="qcow2")
        size = path.stat().st_size
        return _answer(
            export_id, size, int(info["virtual-size"]), int(info.get("actual-size", size))
        )

    async def _layout(self, export_id: str) -> Qcow2Layout:
        layout = self._layouts.get(export_id)
        if layout is None:
            storage = self._pool(export_id)
            volume = await storage.get_volume(export_id)
            if volume is None:
                raise InvalidState("absent", "pinned", resource_id=export_id)
            extents = await storage.allocated_extents(export_id)
            layout = Qcow2Layout.from_extents(volume.size_gib * GIB, extents)
            self._layouts[export_id] = layout
        return layout

    def _pool(self, export_id: str) -> StorageDriver:
        if self.storage is None:
            raise InvalidState("absent", "pinned", resource_id=export_id)
        return self.storage

    async def read(self, d: dict[str, Any]) -> dict[str, Any]:
        export_id, offset, length = str(d["export_id"]), int(d["offset"]), int(d["length"])
        if offset < 0 or not 0 < length <= MAX_READ:
            raise InvalidSpec(f"read {length} bytes at {offset}: at most {MAX_READ} at a time")
        path = await self._file(d)
        if path is not None:
            data = await asyncio.to_thread(read_range, path, offset, length)
            return {"data": base64.b64encode(data).decode()}
        storage = self._pool(export_id)
        layout = await self._layout(export_id)

        async def read_guest(at: int, n: int) -> bytes:
            return await storage.read(export_id, at, n)

        data = await layout.read(read_guest, offset, length)
        return {"data": base64.b64encode(data).decode()}

    async def _file(self, d: dict[str, Any]) -> Path | None:
        """The pinned file of a file export (also after an agent restart), else None."""
        export_id = str(d["export_id"])
        if export_id in self._files:
            return self._files[export_id]
        if self.storage is not None and await self.storage.get_volume(export_id) is not None:
            return None
        # Only a finished copy is served: export_root_disk returns it without copying
        # again, and a VM that has gone since cannot be pinned anew by mistake.
        try:
            path = await self.compute.export_root_disk(str(d.get("vm_id", "")), export_id)
        except VmNotFound:
            raise InvalidState("absent", "pinned", resource_id=export_id) from None
        self._files[export_id] = path
        return path

    async def end(self, d: dict[str, Any]) -> dict[str, Any]:
        export_id = str(d["export_id"])
        self._layouts.pop(export_id, None)
        self._files.pop(export_id, None)
        await self.compute.drop_root_disk_export(export_id)
        if self.storage is not None:
            await self.storage.delete_volume(export_id, force=True)
        return {}


def _answer(export_id: str, size: int, virtual_size: int, data_bytes: int) -> dict[str, Any]:
    return {
        "export": {
            "id": export_id,
            "format": "qcow2",
            "size_bytes": size,
            "virtual_size_bytes": virtual_size,
            "data_bytes": data_bytes,
        }
    }


def read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


__all__ = ["MAX_READ", "DiskExports", "read_range"]
