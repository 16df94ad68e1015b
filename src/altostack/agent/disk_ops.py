"""Agent commands for cloud disks: volumes of the host's storage pool, their snapshots,
and attaching them to this host's VMs through the compute driver.

Every command is idempotent and names the volume (``volume_id``), so a retried or resumed
operation converges: ``ensure_volume`` returns an existing volume as it is, deletes of
missing objects succeed, attaching an attached disk is a no-op. ``ensure_volume`` and the
attach/detach commands carry the disk's ``generation`` and answer it back, as
``ensure_vm`` does, so a controller can tell which spec an answer is about.

What the running hypervisor must do itself (the pool cannot touch an image QEMU holds
open: qcow2 files on ``local``): growing an attached disk (``block_resize``) and
snapshotting it (an internal snapshot through QEMU). Backends that can do it behind a
running VM (``online_resize`` / ``live_snapshots``: sim, Ceph) do it in the pool and the
hypervisor is only told.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from altostack.drivers.compute.base import ComputeDriver, DiskSpec
from altostack.drivers.errors import ImageNotFound, NotSupported, VmNotFound
from altostack.drivers.storage.base import (
    StorageDriver,
    VolumeInfo,
    VolumeSource,
    VolumeSpec,
    attach_target,
)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ImageFile = Callable[[str], Awaitable[Path]]

_CHUNK = 1 << 20
_SIM_IMAGE_BYTES = 1 << 20


def backend_name(storage: StorageDriver) -> str:
    """``local``, ``ceph``, ``sim`` (what storage pools are declared with)."""
    declared = getattr(storage, "backend", None)
    if isinstance(declared, str):
        return declared
    name = type(storage).__name__.lower()
    for known in ("local", "ceph", "sim"):
        if name.startswith(known):
            return known
    return name.removesuffix("storagedriver")


def _volume(info: VolumeInfo) -> dict[str, Any]:
    return {"id": info.id, "size_gib": info.size_gib, "allocated_bytes": info.allocated_bytes}


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _sim_image(image_id: str) -> AsyncIterator[bytes]:
    """Deterministic bytes standing for an image the sim host has no file of."""
    seed = image_id.encode()
    for n in range(_SIM_IMAGE_BYTES // 32):
        yield hashlib.sha256(seed + n.to_bytes(8, "big")).digest()


class DiskOps:
    def __init__(
        self,
        compute: ComputeDriver,
        storage: StorageDriver | None,
        image_file: ImageFile | None = None,
    ) -> None:
        self.compute = compute
        self.storage = storage
        self.image_file = image_file

    def _pool(self) -> StorageDriver:
        if self.storage is None:
            raise NotSupported("disks", "this host has no storage pool for disks")
        return self.storage

    def handlers(self) -> dict[str, Handler]:
        return {
            "ensure_volume": self.ensure,
            "delete_volume": self.delete,
            "resize_volume": self.resize,
            "snapshot_volume": self.snapshot,
            "delete_volume_snapshot": self.delete_snapshot,
            "rollback_volume": self.rollback,
            "attach_volume": self.attach,
            "detach_volume": self.detach,
            "volume_info": self.info,
            "pool_report": self.pool_report,
        }

    async def report(self) -> dict[str, Any] | None:
        """What the heartbeat carries about the pool (None without one)."""
        if self.storage is None:
            return None
        info = await self.storage.pool_info()
        return {
            "backend": backend_name(self.storage),
            "capacity_bytes": info.capacity_bytes,
            "allocated_bytes": info.allocated_bytes,
            "provisioned_bytes": info.provisioned_bytes,
            "health": info.health,
            "health_detail": info.health_detail,
        }

    async def pool_report(self, _d: dict[str, Any]) -> dict[str, Any]:
        return {"pool": await self.report()}

    async def ensure(self, d: dict[str, Any]) -> dict[str, Any]:
        storage = self._pool()
        raw = d.get("source")
        source: VolumeSource | None = (str(raw[0]), str(raw[1])) if raw else None  # type: ignore[assignment]
        spec = VolumeSpec(str(d["volume_id"]), int(d["size_gib"]), source=source)
        try:
            info = await storage.ensure_volume(spec)
        except ImageNotFound:
            if source is None or source[0] != "image":
                raise
            await self._import(storage, source[1])
            info = await storage.ensure_volume(spec)
        return {"volume": _volume(info), "generation": d.get("generation")}

    async def _import(self, storage: StorageDriver, image_id: str) -> None:
        """Bring an image into the pool from the host's image cache (the sim makes one up)."""
        if self.image_file is not None:
            chunks = _file_chunks(await self.image_file(image_id))
        elif backend_name(storage) == "sim":
            chunks = _sim_image(image_id)
        else:
            raise NotSupported("image", f"this host cannot fetch image {image_id} into its pool")
        await storage.import_image(image_id, chunks)

    async def delete(self, d: dict[str, Any]) -> dict[str, Any]:
        await self._pool().delete_volume(str(d["volume_id"]), force=True)
        return {"generation": d.get("generation")}

    async def info(self, d: dict[str, Any]) -> dict[str, Any]:
        storage = self._pool()
        volume_id = str(d["volume_id"])
        found = await storage.get_volume(volume_id)
        snaps = await storage.list_snapshots(volume_id) if found is not None else []
        return {
            "volume": _volume(found) if found is not None else None,
            "snapshots": [s.id for s in snaps],
        }

    async def _live(self, vm_id: str | None, volume_id: str) -> bool:
        """Whether ``volume_id`` is attached to ``vm_id`` and that VM runs here now."""
        if not vm_id:
            return False
        status = await self.compute.get_vm(vm_id)
        if status is None or status.state not in ("running", "paused"):
            return False
        return any(disk.id == volume_id for disk in await self.compute.list_disks(vm_id))

    async def resize(self, d: dict[str, Any]) -> dict[str, Any]:
        storage = self._pool()
        volume_id, size = str(d["volume_id"]), int(d["size_gib"])
        vm_id = d.get("vm_id")
        if await self._live(vm_id, volume_id):
            assert vm_id is not None
            if storage.capabilities.online_resize:
                await storage.resize_volume(volume_id, size)
            await self.compute.resize_disk(str(vm_id), volume_id, size)  # QEMU: block_resize
            found = await storage.get_volume(volume_id)
            info = found if found is not None else await storage.resize_volume(volume_id, size)
        else:
            info = await storage.resize_volume(volume_id, size)
        return {"volume": _volume(info)}

    async def snapshot(self, d: dict[str, Any]) -> dict[str, Any]:
        storage = self._pool()
        volume_id, snap_id = str(d["volume_id"]), str(d["snapshot_id"])
        vm_id = d.get("vm_id")
        if await self._live(vm_id, volume_id) and not storage.capabilities.live_snapshots:
            with_hypervisor = getattr(storage, "create_snapshot_with", None)
            if with_hypervisor is None:
                raise NotSupported("live_snapshots", "this pool cannot snapshot a disk in use")

            async def take() -> None:
                await self.compute.snapshot_attached_disk(str(vm_id), volume_id, snap_id)

            snap = await with_hypervisor(volume_id, snap_id, take)
        else:
            snap = await storage.create_snapshot(volume_id, snap_id)
        return {"snapshot": {"id": snap.id, "volume_id": snap.volume_id, "size_gib": snap.size_gib}}

    async def delete_snapshot(self, d: dict[str, Any]) -> dict[str, Any]:
        await self._pool().delete_snapshot(str(d["snapshot_id"]))
        return {}

    async def rollback(self, d: dict[str, Any]) -> dict[str, Any]:
        """The control plane has checked that no running VM uses the volume."""
        info = await self._pool().rollback(str(d["volume_id"]), str(d["snapshot_id"]))
        return {"volume": _volume(info)}

    async def attach(self, d: dict[str, Any]) -> dict[str, Any]:
        volume_id, vm_id = str(d["volume_id"]), str(d["vm_id"])
        target = await attach_target(self._pool(), volume_id)
        await self.compute.attach_disk(
            vm_id, DiskSpec(volume_id, target.path, target.format, protocol=target.protocol)
        )
        return {"attached": True, "generation": d.get("generation")}

    async def detach(self, d: dict[str, Any]) -> dict[str, Any]:
        with contextlib.suppress(VmNotFound):  # the VM is gone: nothing holds the disk
            await self.compute.detach_disk(
                str(d["vm_id"]), str(d["volume_id"]), timeout=float(d.get("timeout", 30))
            )
        return {"attached": False, "generation": d.get("generation")}
