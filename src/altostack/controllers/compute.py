"""Operation handlers for VMs: each drives the VM's host agent to the new spec.

A handler re-reads the VM (level-triggered), sends one idempotent command, and records
what the agent observed. If the agent stays silent the operation is retried with
backoff; after the last attempt (or a driver error no retry can fix) the VM is left in
``error`` with the reason, never stuck in a transitional state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import delete

from altostack.bus import Bus
from altostack.controllers.host_monitor import follow_guest_shutdown
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.db.database import Database
from altostack.db.models_compute import AntiAffinitySlot, Vm
from altostack.db.types import utcnow
from altostack.domain.agent_protocol import PERMANENT_CODES, agent_subject, command
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.services.placement import Claim, PlacementService
from altostack.services.quotas import QuotaService
from altostack.services.vms import claim_of, drop_root_snapshots

log = structlog.get_logger(__name__)

Handler = Callable[[OperationContext], Awaitable[dict[str, Any] | None]]
NetworkHook = Callable[[str], Awaitable[list[dict[str, Any]]]]
"""Pushes the VPCs of a VM's NICs to the hosts and returns the NICs (network_sync)."""


def vm_spec(
    vm: Vm,
    *,
    power_state: str | None = None,
    password: str | None = None,
    nics: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The VM as the agent's ``ensure_vm`` expects it (drivers.compute.base.VmSpec)."""
    return {
        "id": vm.id,
        "name": vm.name,
        "generation": vm.generation,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "root_disk_gib": vm.root_disk_gib,
        "image_id": vm.image_id,
        "arch": vm.arch,
        "power_state": power_state or vm.power_state,
        "hostname": vm.hostname,
        "password": password,
        "ssh_keys": list(vm.ssh_keys or []),
        "user_data": vm.user_data,
        "nics": nics or [],
        "gpus": list(vm.gpu_addresses or []),
        "metadata": {"tenant_id": vm.tenant_id},
    }


class AgentUnavailable(TemporaryError):
    pass


class ComputeController:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        placement: PlacementService,
        *,
        agent_timeout: float,
        max_attempts: int,
        recycle_seconds: int,
    ) -> None:
        self.db = db
        self.bus = bus
        self.placement = placement
        self.agent_timeout = agent_timeout
        self.max_attempts = max_attempts
        self.recycle_seconds = recycle_seconds
        self.network: NetworkHook | None = None
        self.quotas: QuotaService | None = None
        """Set by bootstrap: a purge gives back the quota of the root disk's snapshots."""

    def register(self, registry: OperationRegistry) -> None:
        for kind, handler in {
            "vm.create": self.create,
            "vm.start": self.start,
            "vm.stop": self.stop,
            "vm.reboot": self.reboot,
            "vm.reinstall": self.reinstall,
            "vm.resize": self.resize,
            "vm.reset_password": self.reset_password,
            "vm.delete": self.delete,
            "vm.restore": self.restore,
            "vm.purge": self.purge,
            "vm.reconcile": self.reconcile,
        }.items():
            registry.register(kind, self._guarded(handler))

    # ---- plumbing --------------------------------------------------------------------
    def _guarded(self, handler: Handler) -> Handler:
        """Put the VM in ``error`` (with the reason) when its operation fails for good."""

        async def run(ctx: OperationContext) -> dict[str, Any] | None:
            try:
                return await handler(ctx)
            except TemporaryError as exc:
                if ctx.attempt < self.max_attempts:
                    raise
                await self._set_error(ctx.resource_id, str(exc))
                raise PermanentError(str(exc), "AgentUnavailable") from exc
            except PermanentError as exc:
                await self._set_error(ctx.resource_id, str(exc))
                raise

        return run

    async def _set_error(self, vm_id: str | None, reason: str) -> None:
        async with self.db.uow() as uow:
            vm = await uow.session.get(Vm, vm_id) if vm_id else None
            if vm is not None and vm.state not in ("deleted",):
                vm.state = "error"
                vm.reason = reason
                await uow.commit()

    async def operation_vm(self, ctx: OperationContext) -> Vm:
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, ctx.resource_id) if ctx.resource_id else None
        if vm is None:
            raise PermanentError(f"VM {ctx.resource_id} no longer exists", "NotFound")
        if not vm.host_id:
            raise PermanentError(f"VM {vm.id} has no host", "NoHost")
        return vm

    async def call(
        self, host_id: str, action: str, *, slow: float = 1.0, extra: float = 0.0, **fields: Any
    ) -> dict[str, Any]:
        """One command to a host agent; silence becomes a retryable failure.

        Commands that boot or stop guests take longer: ``slow`` multiplies the agent
        timeout, ``extra`` adds seconds the caller itself grants (a graceful stop)."""
        timeout = self.agent_timeout * slow + extra
        try:
            reply = await self.bus.request(
                agent_subject(host_id), command(action, **fields), timeout=timeout
            )
        except TimeoutError as exc:
            raise AgentUnavailable(
                f"the agent of host {host_id} did not answer {action} within {timeout:g} s",
                delay=2.0,
            ) from exc
        if not reply.get("ok"):
            error = reply.get("error") or {}
            message = f"{error.get('code', 'Error')}: {error.get('message', 'unknown error')}"
            if error.get("code") in PERMANENT_CODES:
                raise PermanentError(message, str(error.get("code")))
            raise TemporaryError(message, delay=2.0)
        return reply

    async def ensure(self, vm: Vm, power_state: str | None) -> dict[str, Any]:
        # Only VMs that were given a subnet pay for the NIC push (a stopped VM's start).
        nics = await self.network(vm.id) if self.network and vm.subnet_id else []
        spec = vm_spec(vm, power_state=power_state, nics=nics)
        return await self.call(vm.host_id or "", "ensure_vm", spec=spec, slow=4)

    async def nics_changed(self, vm_id: str) -> dict[str, Any]:
        """Give the VM its current NICs: hot-plugged into a running guest (or unplugged),
        recorded for the next start of a stopped one. A VM that is not running or stopped
        (being created, moved, deleted) gets them from the operation doing that."""
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, vm_id)
        if vm is None or not vm.host_id or vm.state not in ("running", "stopped"):
            return {"state": vm.state if vm else "gone"}
        reply = await self.ensure(vm, None)
        return await self.observe(vm.id, reply["status"])

    async def observe(
        self, vm_id: str, status: dict[str, Any] | None, **changes: Any
    ) -> dict[str, Any]:
        """Record the observed state of a VM (and any spec-side changes)."""
        async with self.db.uow() as uow:
            vm = await uow.session.get(Vm, vm_id)
            if vm is None:
                return {}
            for key, value in changes.items():
                setattr(vm, key, value)
            if status is not None:
                observed = str(status.get("state"))
                vm.state = {"crashed": "error", "paused": "running"}.get(observed, observed)
                if observed == "crashed":
                    vm.reason = "the guest crashed"
                vm.observed_generation = int(status.get("generation") or vm.observed_generation)
                vm.accel = status.get("accel") or vm.accel
            await uow.commit()
            return {"state": vm.state, "generation": vm.observed_generation}

    # ---- handlers --------------------------------------------------------------------
    async def create(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        if vm.state == "deleted":
            raise PermanentError(f"VM {vm.id} was deleted before it was created")
        nics = await self.network(vm.id) if self.network and vm.subnet_id else []
        spec = vm_spec(vm, password=ctx.input.get("password"), nics=nics)
        await ctx.progress(10)
        reply = await self.call(vm.host_id or "", "ensure_vm", spec=spec, slow=4)
        return await self.observe(vm.id, reply["status"], reason=None)

    async def reconcile(self, ctx: OperationContext) -> dict[str, Any]:
        """Drive the VM back to its spec (started again, stopped again, re-created)."""
        vm = await self.operation_vm(ctx)
        if vm.state == "deleted":
            return {"state": "deleted"}
        if vm.power_state == "running" and vm.host_id:
            # Decide on what the host has now, not on the (older) report that queued this:
            # a guest that shut itself down since is followed, never started again.
            now = (await self.call(vm.host_id, "get_vm", vm_id=vm.id)).get("status")
            if now and now.get("state") == "stopped" and now.get("stopped_by") == "guest":
                await follow_guest_shutdown(self.db, vm.id)
                return await self.observe(vm.id, now)
        reply = await self.ensure(vm, None)
        return await self.observe(vm.id, reply["status"])

    async def start(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        reply = await self.ensure(vm, "running")
        return await self.observe(vm.id, reply["status"], reason=None)

    async def stop(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        timeout = float(ctx.input.get("timeout", 60))
        reply = await self.call(
            vm.host_id or "",
            "stop_vm",
            vm_id=vm.id,
            timeout=timeout,
            force=bool(ctx.input.get("force")),
            extra=timeout,
            slow=2,
        )
        return await self.observe(vm.id, reply["status"])

    async def reboot(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        reply = await self.call(vm.host_id or "", "reboot_vm", vm_id=vm.id, slow=4)
        return await self.observe(vm.id, reply["status"])

    async def reinstall(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        spec = vm_spec(vm, power_state="stopped", password=ctx.input.get("password"))
        reply = await self.call(vm.host_id or "", "reinstall_vm", spec=spec, slow=6)
        return await self.observe(vm.id, reply["status"])

    async def resize(self, ctx: OperationContext) -> dict[str, Any]:
        """Live when the VM runs and the host can add CPU/memory; otherwise stop, resize,
        start again (only with ``allow_restart``)."""
        vm = await self.operation_vm(ctx)
        host = vm.host_id or ""
        live = bool(ctx.input.get("live"))
        if live:
            reply = await self.call(
                host, "resize_vm", vm_id=vm.id, vcpus=vm.vcpus, memory_mib=vm.memory_mib, live=True
            )
            if reply.get("ok"):
                return await self.observe(vm.id, reply["status"])
        if ctx.input.get("was_running") and not ctx.checkpoint.get("stopped"):
            if not ctx.input.get("allow_restart") and not live:
                raise PermanentError("the VM must restart to resize; allow_restart was false")
            await self.call(host, "stop_vm", vm_id=vm.id, timeout=60.0, slow=4)
            await ctx.progress(40, {"stopped": True})
        await self.call(
            host, "resize_vm", vm_id=vm.id, vcpus=vm.vcpus, memory_mib=vm.memory_mib, live=False
        )
        await ctx.progress(70, {"resized": True})
        power = "running" if ctx.input.get("was_running") else "stopped"
        reply = await self.call(host, "ensure_vm", spec=vm_spec(vm, power_state=power), slow=4)
        return await self.observe(vm.id, reply["status"])

    async def reset_password(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        user = ctx.input.get("user") or "root"
        await self.call(
            vm.host_id or "", "set_password", vm_id=vm.id, user=user, password=ctx.input["password"]
        )
        return {"state": vm.state}

    async def delete(self, ctx: OperationContext) -> dict[str, Any]:
        """To the recycle bin: the VM is stopped (forced after a grace) and kept."""
        vm = await self.operation_vm(ctx)
        reply = await self.ensure(vm, "stopped")
        now = utcnow()
        return await self.observe(
            vm.id,
            None,
            state="deleted",
            deleted_at=now,
            reason=None,
            purge_after=now + timedelta(seconds=self.recycle_seconds),
            observed_generation=int((reply.get("status") or {}).get("generation") or 0),
        )

    async def restore(self, ctx: OperationContext) -> dict[str, Any]:
        vm = await self.operation_vm(ctx)
        reply = await self.ensure(vm, "stopped")
        return await self.observe(vm.id, reply["status"])

    async def purge(self, ctx: OperationContext) -> dict[str, Any]:
        """Destroy for good: the disk goes, its claim too, and the row."""
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, ctx.resource_id) if ctx.resource_id else None
        if vm is None:
            return {"purged": True}
        if vm.host_id:
            await self.call(vm.host_id, "delete_vm", vm_id=vm.id, slow=4)
        async with self.db.uow() as uow:
            row = await uow.session.get(Vm, vm.id)
            if row is not None:
                if row.host_id:
                    claim = claim_of(row)
                    await self.placement.release(
                        uow, Claim(claim.host_id, claim.cluster_id, 0, 0, claim.disk_gib, 0), row.id
                    )
                await uow.session.execute(
                    delete(AntiAffinitySlot).where(AntiAffinitySlot.vm_id == vm.id)
                )
                if self.quotas is not None:  # its root disk went, and the snapshots in it
                    await drop_root_snapshots(uow, row, self.quotas)
                await uow.session.delete(row)
                await uow.commit()
        return {"purged": True}
