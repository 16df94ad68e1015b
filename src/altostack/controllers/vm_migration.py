"""The ``vm.migrate`` operation: a VM moves to the host its request claimed.

Live (the VM runs): the source describes the VM, the destination gets ready (its own
root disk on its copy of the image, served over NBD for a block migration), the source
sends disk and memory while the guest runs, the destination resumes it. Cold (stopped):
the source writes its root disk's changes over the image, the controller carries them to
the destination in checked pieces (with the bytes of any local data disk), the
destination takes the VM over stopped, and only then does the source delete its copy.

The database says the VM lives on the source until the destination has it; then one
transaction moves it (host, claims, anti-affinity slot). A failure before that leaves
the VM where it was, in the state it was in (not ``error``), frees what the destination
held and fails the operation with the reason. After a control-plane crash the operation
runs again: it first asks both hosts where the VM is and finishes or starts over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import delete, select, update

from altostack.controllers.compute import ComputeController, vm_spec
from altostack.controllers.image_export import PIECE
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.db.models_compute import AntiAffinitySlot, Vm
from altostack.db.models_storage import Disk
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.services.placement import Claim, moving_slot

if TYPE_CHECKING:
    from altostack.controllers.network_sync import NetworkSyncController

log = structlog.get_logger(__name__)

MIGRATE_TIMEOUT = 900.0
"""Seconds a live transfer (disk copy + memory) may take before it is cancelled."""


class MigrationController:
    def __init__(
        self, compute: ComputeController, network: NetworkSyncController | None = None
    ) -> None:
        self.compute = compute
        self.db = compute.db
        self.placement = compute.placement
        self.network = network

    def register(self, registry: OperationRegistry) -> None:
        registry.register("vm.migrate", self.migrate)

    async def migrate(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.compute.operation_vm(ctx)
        source, target = str(ctx.input["source_host_id"]), str(ctx.input["target_host_id"])
        if vm.host_id == target:  # a re-run after the switch was committed
            return {"host_id": target, "state": vm.state}
        try:
            where = await self._where(vm.id, source, target)
            if where == "target":  # a re-run after the destination took it over
                status = await self._get(target, vm.id)
            elif ctx.input["mode"] == "live":
                status = await self._live(ctx, vm, source, target)
            else:
                status = await self._cold(ctx, vm, source, target)
        except (TemporaryError, PermanentError) as exc:
            if isinstance(exc, TemporaryError) and ctx.attempt < self.compute.max_attempts:
                raise
            await self._give_up(ctx, vm, source, target)
            raise PermanentError(
                f"VM {vm.id} stays on host {source}: the move to host {target} failed: {exc}",
                "MigrationFailed",
            ) from exc
        return await self._switch(ctx, vm, source, target, status)

    # ---- the two ways ----------------------------------------------------------------
    async def _live(
        self, ctx: OperationContext, vm: Vm, source: str, target: str
    ) -> dict[str, Any]:
        call = self.compute.call
        if self.network is not None and vm.subnet_id:
            await self.network.arriving(vm.id, target)
        mode = "block" if ctx.input.get("block_migration") else "shared"
        manifest = (await call(source, "migration_manifest", vm_id=vm.id, mode=mode))["manifest"]
        await ctx.progress(10)
        incoming = await call(target, "prepare_incoming", vm_id=vm.id, manifest=manifest, slow=6)
        await ctx.progress(20)
        result = (
            await call(
                source,
                "migrate_vm",
                vm_id=vm.id,
                target=incoming["target"],
                downtime_limit_ms=300,
                timeout=MIGRATE_TIMEOUT,
                extra=MIGRATE_TIMEOUT,
            )
        )["result"]
        await ctx.progress(90, {"transferred": True, "result": result})
        finished = await call(target, "finish_incoming", vm_id=vm.id, slow=4)
        return dict(finished["status"])

    async def _cold(
        self, ctx: OperationContext, vm: Vm, source: str, target: str
    ) -> dict[str, Any]:
        call = self.compute.call
        transfer = ctx.id
        manifest = (await call(source, "migration_manifest", vm_id=vm.id, mode="cold"))["manifest"]
        disks = await self._data_disks(vm.id)
        for disk in disks:  # the VM is stopped: a plain detach, put back on the other side
            await call(source, "detach_volume", vm_id=vm.id, volume_id=disk.id)
        local = set(ctx.input.get("local_disks") or [])
        exported = await call(
            source, "export_root_changes", vm_id=vm.id, transfer_id=transfer, slow=10
        )
        size, digest = int(exported["size"]), str(exported["sha256"])
        total = size + sum(d.size_gib for d in disks if d.id in local)  # for progress only
        done = 0
        for offset in range(0, size, PIECE):
            piece = await call(
                source,
                "read_transfer",
                vm_id=vm.id,
                transfer_id=transfer,
                offset=offset,
                length=min(PIECE, size - offset),
            )
            await call(
                target,
                "write_transfer",
                vm_id=vm.id,
                transfer_id=transfer,
                offset=offset,
                data=piece["data"],
            )
            done += min(PIECE, size - offset)
            await ctx.progress(10 + int(70 * done / max(total, 1)))
        for disk in disks:
            if disk.id in local:
                await self._copy_volume(vm.id, disk.id, source, target)
        status = (
            await call(
                target,
                "receive_stopped",
                vm_id=vm.id,
                manifest=manifest,
                transfer_id=transfer,
                size=size,
                sha256=digest,
                slow=10,
            )
        )["status"]
        await ctx.progress(85, {"received": True})
        for disk in disks:
            await call(target, "attach_volume", vm_id=vm.id, volume_id=disk.id)
        await call(source, "drop_transfer", vm_id=vm.id, transfer_id=transfer)
        await call(source, "delete_vm", vm_id=vm.id, slow=4)
        for disk in disks:
            if disk.id in local:
                await call(source, "delete_volume", volume_id=disk.id, force=True)
        return dict(status)

    async def _copy_volume(self, vm_id: str, volume_id: str, source: str, target: str) -> None:
        """A local data volume's allocated bytes, piece by piece, into a blank one there."""
        call = self.compute.call
        found = await call(source, "volume_extents", volume_id=volume_id)
        await call(
            target, "volume_extents", volume_id=volume_id, create=True, size_gib=found["size_gib"]
        )
        for start, length in found["extents"]:
            for offset in range(int(start), int(start) + int(length), PIECE):
                n = min(PIECE, int(start) + int(length) - offset)
                piece = await call(
                    source, "read_volume", volume_id=volume_id, offset=offset, length=n
                )
                await call(
                    target, "write_volume", volume_id=volume_id, offset=offset, data=piece["data"]
                )

    # ---- bookkeeping -----------------------------------------------------------------
    async def _data_disks(self, vm_id: str) -> list[Disk]:
        async with self.db.uow(write=False) as uow:
            rows = await uow.session.scalars(
                select(Disk).where(Disk.vm_id == vm_id).order_by(Disk.id)
            )
            return list(rows.all())

    async def _get(self, host: str, vm_id: str) -> dict[str, Any]:
        reply = await self.compute.call(host, "get_vm", vm_id=vm_id)
        status = reply.get("status")
        return dict(status) if status else {}

    async def _where(self, vm_id: str, source: str, target: str) -> str:
        """``target`` when the destination already holds the VM (a re-run after it took
        it over), else ``source``; leftovers of an earlier attempt there are cleared."""
        there = await self._get(target, vm_id)
        if there and there.get("state") in ("running", "stopped", "paused"):
            if not await self._get(source, vm_id):
                return "target"
            if there.get("state") == "stopped":  # a cold copy the source never let go of
                await self.compute.call(target, "delete_vm", vm_id=vm_id, slow=4)
        await self.compute.call(target, "abort_incoming", vm_id=vm_id)
        return "source"

    async def _switch(
        self, ctx: OperationContext, vm: Vm, source: str, target: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """The destination has the VM: it lives there now (one transaction)."""
        async with self.db.uow() as uow:
            row = await uow.session.get(Vm, vm.id)
            if row is None:
                return {}
            row.host_id = target
            await self.placement.release_on(uow, _claim_on(source, ctx))
            if row.placement_group_id is not None:  # the slot there becomes its own
                await uow.session.execute(
                    delete(AntiAffinitySlot).where(AntiAffinitySlot.vm_id == vm.id)
                )
                await uow.session.execute(
                    update(AntiAffinitySlot)
                    .where(AntiAffinitySlot.vm_id == moving_slot(vm.id))
                    .values(vm_id=vm.id)
                )
            disks = await uow.session.scalars(select(Disk).where(Disk.vm_id == vm.id))
            for disk in disks.all():
                if disk.host_id == source:
                    disk.host_id = target
            row.state = str(ctx.input.get("previous_state") or row.state)
            await uow.commit()
        if self.network is not None and vm.subnet_id:
            await self.network.arriving(vm.id, None)  # ports leave the source
        observed = await self.compute.observe(vm.id, status or None)
        # The spec moved on (generation) while nothing changed: tell the new host.
        async with self.db.uow(write=False) as uow:
            moved = await uow.session.get(Vm, vm.id)
        if moved is not None:
            reply = await self.compute.call(
                target, "ensure_vm", spec=vm_spec(moved, nics=await self._nics(moved)), slow=4
            )
            observed = await self.compute.observe(vm.id, reply["status"])
        log.info("vm migrated", vm_id=vm.id, source=source, target=target, mode=ctx.input["mode"])
        result = ctx.checkpoint.get("result") or {}
        return {**observed, "host_id": target, "source_host_id": source, **result}

    async def _nics(self, vm: Vm) -> list[dict[str, Any]]:
        hook = self.compute.network
        return await hook(vm.id) if hook and vm.subnet_id else []

    async def _give_up(self, ctx: OperationContext, vm: Vm, source: str, target: str) -> None:
        """The VM stays on the source as it was: the destination's copy and claim go."""
        cleanups: list[tuple[str, str, dict[str, Any]]] = [
            (target, "abort_incoming", {"vm_id": vm.id}),
            (target, "drop_transfer", {"vm_id": vm.id, "transfer_id": ctx.id}),
            (source, "drop_transfer", {"vm_id": vm.id, "transfer_id": ctx.id}),
        ]
        for host, action, fields in cleanups:
            try:
                await self.compute.call(host, action, **fields)
            except (TemporaryError, PermanentError) as exc:
                log.warning("clean-up after a failed migration", action=action, error=str(exc))
        if ctx.input["mode"] == "cold":
            await self._restore_cold(ctx, vm, source, target)
        if self.network is not None and vm.subnet_id:
            try:
                await self.network.arriving(vm.id, None)
            except Exception as exc:  # the next push corrects it; the failure is reported
                log.warning("network clean-up after a failed migration", error=str(exc))
        async with self.db.uow() as uow:
            row = await uow.session.get(Vm, vm.id)
            await self.placement.release_on(uow, _claim_on(target, ctx))
            await uow.session.execute(
                delete(AntiAffinitySlot).where(AntiAffinitySlot.vm_id == moving_slot(vm.id))
            )
            if row is not None:
                row.state = str(ctx.input.get("previous_state") or "stopped")
            await uow.commit()
        try:
            status = await self._get(source, vm.id)
            if status:
                await self.compute.observe(vm.id, status)
        except (TemporaryError, PermanentError):
            pass

    async def _restore_cold(self, ctx: OperationContext, vm: Vm, source: str, target: str) -> None:
        """Data disks detached for the move go back on the source (the destination's
        copies of local ones are dropped)."""
        local = set(ctx.input.get("local_disks") or [])
        for disk in await self._data_disks(vm.id):
            steps: list[tuple[str, str, dict[str, Any]]] = [
                (source, "attach_volume", {"vm_id": vm.id, "volume_id": disk.id})
            ]
            if disk.id in local:
                steps.append((target, "delete_volume", {"volume_id": disk.id, "force": True}))
            for host, action, fields in steps:
                try:
                    await self.compute.call(host, action, **fields)
                except (TemporaryError, PermanentError) as exc:
                    log.warning("restoring a disk after a failed migration", error=str(exc))


def _claim_on(host_id: str, ctx: OperationContext) -> Claim:
    """What the VM holds on ``host_id`` (the same on both hosts of a move)."""
    claim = ctx.input["claim"]
    return Claim(
        host_id, "", int(claim["vcpus"]), int(claim["memory_mib"]), int(claim["disk_gib"]), 0
    )
