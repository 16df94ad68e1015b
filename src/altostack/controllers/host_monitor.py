"""Heartbeats in, reconciliation out.

Agents report what they see; this controller marks hosts alive (or ``down`` when the
reports stop), and compares each reported VM with its spec. It acts only on a difference
and only for a VM no operation is already working on:
- the guest powered itself off → the spec follows (the user meant it);
- a VM that should run is stopped, crashed or missing → a ``vm.reconcile`` operation
  drives it back; one that should be stopped but runs is stopped again;
- a VM the database does not know is an *orphan*: reported in the event log once, never
  destroyed (it may be a VM the database lost, and data matters more than tidiness).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import select

from altostack.bus import Bus, Message, Subscription
from altostack.db.database import Database
from altostack.db.models import Operation
from altostack.db.models_compute import Vm
from altostack.domain.agent_protocol import HEARTBEAT_SUBJECT
from altostack.domain.vm_states import TRANSITIONAL
from altostack.services.context import SYSTEM, RequestContext
from altostack.services.events import EventService, build_event
from altostack.services.infra import InfraService
from altostack.services.operations import OperationService
from altostack.services.vms import VmService

log = structlog.get_logger(__name__)


class HostMonitor:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        infra: InfraService,
        operations: OperationService,
        events: EventService,
        vms: VmService,
        *,
        interval: float,
        network_resync: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.infra = infra
        self.operations = operations
        self.events = events
        self.vms = vms
        self.interval = interval
        self.network_resync = network_resync
        """Re-pushes a restarted agent's VPCs (its first heartbeat says ``network_fresh``)."""
        self._orphans_seen: set[str] = set()
        self.extra_sweeps: list[Callable[[], Awaitable[object]]] = []
        """More periodic housekeeping (the disks' recycle bin), run after each sweep."""
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(
            HEARTBEAT_SUBJECT, self.on_heartbeat, queue="host-monitor"
        )
        self._task = asyncio.create_task(self._loop(), name="host-monitor")

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host sweep failed")

    async def sweep(self) -> None:
        """Mark silent hosts down and purge the recycle bin when items are due."""
        for host_id in await self.infra.mark_dead_hosts():
            log.warning("host missed its heartbeats", host_id=host_id)
            await self.events.record(
                build_event(
                    principal=None,
                    action="host.down",
                    result="failure",
                    resource_type="host",
                    resource_id=host_id,
                    failure_reason="no heartbeat",
                    tenant_id="system",
                )
            )
        for vm_id in await self.vms.due_for_purge():
            await self._operation(vm_id, "vm.purge", tenant_id=None)
        for extra in self.extra_sweeps:
            await extra()

    async def on_heartbeat(self, message: Message) -> dict[str, Any] | None:
        host_id = str(message.data.get("host_id"))
        load = message.data.get("load")
        if not await self.infra.heartbeat(host_id, float(load) if load is not None else None):
            log.warning("heartbeat from an unknown host", host_id=host_id)
            return None
        await self.reconcile(host_id, list(message.data.get("vms") or []))
        if message.data.get("network_fresh") and self.network_resync is not None:
            await self.network_resync(host_id)
        return None

    async def reconcile(self, host_id: str, reports: list[dict[str, Any]]) -> None:
        observed = {str(r["id"]): r for r in reports}
        async with self.db.uow(write=False) as uow:
            known = {
                vm.id: vm
                for vm in await uow.session.scalars(select(Vm).where(Vm.host_id == host_id))
            }
            foreign = set(observed) - set(known)
            if foreign:  # maybe known elsewhere (e.g. mid-migration) — then not an orphan
                others = await uow.session.scalars(select(Vm.id).where(Vm.id.in_(foreign)))
                foreign -= set(others)
        for vm_id in sorted(foreign - self._orphans_seen):
            self._orphans_seen.add(vm_id)
            log.warning("orphan VM found", host_id=host_id, vm_id=vm_id)
            await self.events.record(
                build_event(
                    principal=None,
                    action="vm.orphan",
                    result="failure",
                    resource_type="vm",
                    resource_id=vm_id,
                    tenant_id="system",
                    failure_reason=f"host {host_id} runs VM {vm_id}, which the database does not "
                    "know; it was left untouched",
                    details={"host_id": host_id, "state": observed[vm_id].get("state")},
                )
            )
        for vm in known.values():
            await self._reconcile_vm(vm, observed.get(vm.id))

    async def _reconcile_vm(self, vm: Vm, report: dict[str, Any] | None) -> None:
        if vm.state in TRANSITIONAL or (vm.state == "deleted" and report is None):
            return
        state = report.get("state") if report else None
        if vm.state == "deleted":
            if state == "running":
                await self._operation(vm.id, "vm.reconcile", tenant_id=vm.tenant_id)
            return
        wanted = vm.power_state
        if (
            wanted == "running"
            and state == "stopped"
            and report
            and report.get("stopped_by") == "guest"
        ):
            await self._follow_guest(vm)
            return
        drift = (
            report is None
            or (wanted == "running" and state in ("stopped", "crashed"))
            or (wanted == "stopped" and state in ("running", "paused"))
        )
        if drift:
            await self._operation(vm.id, "vm.reconcile", tenant_id=vm.tenant_id)
        elif vm.state == "error" and state == wanted:
            await self._set_state(vm.id, wanted)

    async def _follow_guest(self, vm: Vm) -> None:
        await follow_guest_shutdown(self.db, vm.id)

    async def _set_state(self, vm_id: str, state: str) -> None:
        async with self.db.uow() as uow:
            row = await uow.session.get(Vm, vm_id)
            if row is not None and row.state == "error":
                row.state = state
                row.reason = None
                await uow.commit()

    async def _operation(self, vm_id: str, kind: str, *, tenant_id: str | None) -> None:
        """Queue a system operation for the VM unless one is already working on it."""
        async with self.db.uow() as uow:
            busy = await uow.session.scalar(
                select(Operation.id)
                .where(Operation.resource_id == vm_id, Operation.state.in_(("pending", "running")))
                .limit(1)
            )
            if busy is not None:
                return
            row = await uow.session.get(Vm, vm_id)
            if row is None:
                return
            ctx = RequestContext(SYSTEM)
            self.operations.create(
                uow, ctx, kind, resource_type="vm", resource_id=vm_id, tenant_id=row.tenant_id
            )
            await uow.commit()
        log.info("reconciling VM", vm_id=vm_id, kind=kind)


async def follow_guest_shutdown(db: Database, vm_id: str) -> bool:
    """The guest shut itself down: that is the user's wish, the spec follows.

    False when there is nothing to follow (the VM is gone, busy, or meant to be stopped).
    """
    async with db.uow() as uow:
        row = await uow.session.get(Vm, vm_id)
        if row is None or row.state in TRANSITIONAL or row.power_state != "running":
            return False
        row.power_state = "stopped"
        row.state = "stopped"
        row.generation += 1
        uow.events.add(
            build_event(
                principal=None,
                action="vm.guest-shutdown",
                result="success",
                resource_type="vm",
                resource_id=vm_id,
                tenant_id=row.tenant_id,
                details={"source": "reconciler"},
            )
        )
        await uow.commit()
    return True
