"""Root disks of sim VMs, kept as volumes of a storage driver (the sim pool of the host).

A sim VM has no guest to write its disk, so this writes what an installed guest would
have: the image's system files (the same bytes for every VM of an image, shared between
their volumes as a real pool shares a base image) and a small per-VM area (hostname,
machine id, a boot counter bumped at every boot). So an exported root disk has a real,
VM-specific size and checksum, and the export path (pin, map, read) runs on real data.
"""

from __future__ import annotations

import hashlib
import json

from altostack.drivers.compute.base import VmSpec
from altostack.drivers.storage.base import StorageDriver, VolumeSpec, root_volume_id

SYSTEM_BYTES = 512 * 1024
"""How much of an image the sim lays down on each root disk."""
_VM_AREA = 1024 * 1024
_BLOCK = 64 * 1024
"""Where the per-VM data lives on the disk."""


class SimRootDisks:
    def __init__(self, storage: StorageDriver) -> None:
        self.storage = storage
        self._system: dict[str, tuple[bytes, ...]] = {}

    def _system_files(self, image_id: str) -> tuple[bytes, ...]:
        """Deterministic 64 KiB blocks standing for the image's files (SHA-256 in counter
        mode), made once per image."""
        found = self._system.get(image_id)
        if found is None:
            seed = image_id.encode()
            data = b"".join(
                hashlib.sha256(seed + n.to_bytes(8, "big")).digest()
                for n in range(SYSTEM_BYTES // 32)
            )
            found = tuple(data[at : at + _BLOCK] for at in range(0, len(data), _BLOCK))
            self._system[image_id] = found
        return found

    async def make(self, spec: VmSpec) -> None:
        """Create and "install" the root disk (idempotent: an existing one is kept)."""
        volume = root_volume_id(spec.id)
        if await self.storage.get_volume(volume) is not None:
            return
        await self.storage.ensure_volume(VolumeSpec(volume, spec.root_disk_gib))
        try:
            # Block by block, so every VM's volume shares the image's bytes objects.
            for n, block in enumerate(self._system_files(spec.image_id)):
                await self.storage.write(volume, n * _BLOCK, block)
            await self._write_identity(spec, boots=0)
        except BaseException:
            await self.storage.delete_volume(volume, force=True)
            raise

    async def _write_identity(self, spec: VmSpec, *, boots: int) -> None:
        record = json.dumps(
            {"vm": spec.id, "hostname": spec.hostname, "image": spec.image_id, "boots": boots}
        ).encode()
        await self.storage.write(root_volume_id(spec.id), _VM_AREA, record.ljust(4096, b"\0"))

    async def booted(self, spec: VmSpec, boots: int) -> None:
        """A boot writes to the disk (logs, the boot counter), as guests do."""
        if await self.storage.get_volume(root_volume_id(spec.id)) is not None:
            await self._write_identity(spec, boots=boots)

    async def reinstall(self, spec: VmSpec) -> None:
        await self.remove(spec.id)
        await self.make(spec)

    async def remove(self, vm_id: str) -> None:
        await self.storage.delete_volume(root_volume_id(vm_id), force=True)
