"""Exporting a stopped VM's root disk as a compact qcow2 image, pulled in chunks.

``export_disk`` pins the disk (a copy-on-write clone in the storage pool, so the image is
the disk as it was then, whatever happens to the VM afterwards) and answers the image's
size; ``read_export`` returns any byte range of the image (base64, so it fits a JSON bus
message: the controller asks for at most 512 KiB at a time, under NATS's 1 MiB default);
``end_export`` drops the clone. Every step is idempotent, and the image is computed from
the clone alone, so a retried or resumed pull, even after an agent restart, reads the
same bytes.
"""

from __future__ import annotations

import base64
from typing import Any

from altostack.drivers.compute.base import ComputeDriver
from altostack.drivers.errors import InvalidSpec, InvalidState, NotSupported, VmNotFound
from altostack.drivers.storage.base import GIB, StorageDriver, VolumeSpec, root_volume_id
from altostack.drivers.storage.qcow2 import Qcow2Layout

MAX_READ = 512 * 1024


class DiskExports:
    def __init__(self, compute: ComputeDriver, storage: StorageDriver | None) -> None:
        self.compute = compute
        self.storage = storage
        self._layouts: dict[str, Qcow2Layout] = {}

    def _pool(self) -> StorageDriver:
        if self.storage is None:
            raise NotSupported(
                "export", "this host keeps no root disks in a storage pool the agent can read"
            )
        return self.storage

    async def begin(self, d: dict[str, Any]) -> dict[str, Any]:
        storage = self._pool()
        vm_id, export_id = str(d["vm_id"]), str(d["export_id"])
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
            if root is None:
                raise NotSupported("export", f"the root disk of {vm_id} is not in the pool")
            await storage.ensure_volume(
                VolumeSpec(export_id, root.size_gib, source=("volume", root.id))
            )
        layout = await self._layout(export_id)
        return {
            "export": {
                "id": export_id,
                "format": "qcow2",
                "size_bytes": layout.size,
                "virtual_size_bytes": layout.virtual_size,
                "data_bytes": len(layout.data) * 65536,
            }
        }

    async def _layout(self, export_id: str) -> Qcow2Layout:
        layout = self._layouts.get(export_id)
        if layout is None:
            storage = self._pool()
            volume = await storage.get_volume(export_id)
            if volume is None:
                raise InvalidState("absent", "pinned", resource_id=export_id)
            extents = await storage.allocated_extents(export_id)
            layout = Qcow2Layout.from_extents(volume.size_gib * GIB, extents)
            self._layouts[export_id] = layout
        return layout

    async def read(self, d: dict[str, Any]) -> dict[str, Any]:
        export_id, offset, length = str(d["export_id"]), int(d["offset"]), int(d["length"])
        if offset < 0 or not 0 < length <= MAX_READ:
            raise InvalidSpec(f"read {length} bytes at {offset}: at most {MAX_READ} at a time")
        storage = self._pool()
        layout = await self._layout(export_id)

        async def read_guest(at: int, n: int) -> bytes:
            return await storage.read(export_id, at, n)

        data = await layout.read(read_guest, offset, length)
        return {"data": base64.b64encode(data).decode()}

    async def end(self, d: dict[str, Any]) -> dict[str, Any]:
        export_id = str(d["export_id"])
        self._layouts.pop(export_id, None)
        if self.storage is not None:
            await self.storage.delete_volume(export_id, force=True)
        return {}
