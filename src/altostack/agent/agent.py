"""The host agent: turns idempotent commands into driver calls and reports what it sees.

It holds no authoritative state. On start it publishes a full report of the VMs it finds
(including ones the control plane may not know), and then heartbeats; controllers compare
and send commands. Commands for one VM are serialised so two retries never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from altostack.agent.codec import (
    host_info_to_dict,
    spec_from_dict,
    stats_to_dict,
    status_to_dict,
)
from altostack.agent.disk_ops import DiskOps
from altostack.agent.exports import DiskExports
from altostack.agent.live_ops import live_handlers
from altostack.agent.network_ops import NetworkOps
from altostack.agent.transfer_ops import Transfers
from altostack.bus import Bus, Message, Subscription
from altostack.domain.agent_protocol import HEARTBEAT_SUBJECT, agent_subject
from altostack.drivers.compute.base import ComputeDriver, VmStatus
from altostack.drivers.errors import BackendFailure, DriverError
from altostack.drivers.network.base import NetworkDriver
from altostack.drivers.storage.base import StorageDriver

log = structlog.get_logger(__name__)

MAX_CONSOLE_LINES = 1000
"""The most console lines one answer carries (bus messages stay small)."""


READS = frozenset({"console_output", "vm_stats"})
"""Commands that only look: they run beside the VM's operations, not after them."""


class Agent:
    def __init__(
        self,
        host_id: str,
        bus: Bus,
        compute: ComputeDriver,
        *,
        heartbeat_interval: float = 5.0,
        storage: StorageDriver | None = None,
        network: NetworkDriver | None = None,
    ) -> None:
        self.host_id = host_id
        self.bus = bus
        self.compute = compute
        self.exports = DiskExports(compute, storage or compute.root_disk_storage)
        self.transfers = Transfers(compute, storage or compute.root_disk_storage)
        images = getattr(compute, "images", None)
        self.disks = DiskOps(
            compute, storage or compute.root_disk_storage, getattr(images, "ensure", None)
        )
        self.heartbeat_interval = heartbeat_interval
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._cores = 1
        self.network = NetworkOps(network) if network is not None else None
        self._network_fresh = True

    async def start(self) -> None:
        info = await self.compute.host_info()
        self._cores = max(info.cores, 1)
        self._sub = await self.bus.subscribe(agent_subject(self.host_id), self._on_command)
        await self.heartbeat()  # the full report that lets controllers reconcile at once
        self._task = asyncio.create_task(self._beat(), name=f"agent-{self.host_id}")
        log.info("agent started", host_id=self.host_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self.network is not None:
            await self.network.driver.close()  # what it serves from here (metadata)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        vms = await self.compute.list_vms()
        busy = sum(v.vcpus for v in vms if v.state == "running")
        beat: dict[str, Any] = {
            "host_id": self.host_id,
            "load": min(1.0, busy / (self._cores * 4)),
            "vms": [status_to_dict(v) for v in vms],
            "storage": await self._storage_report(),
        }
        if self.network is not None and self._network_fresh:
            beat["network_fresh"] = True  # the first report: ask for this host's VPCs
            self._network_fresh = False
        await self.bus.publish(HEARTBEAT_SUBJECT, beat)

    async def _storage_report(self) -> dict[str, Any] | None:
        try:
            return await self.disks.report()
        except Exception:  # a sick pool must not stop the heartbeat
            log.exception("storage pool report failed")
            return {"health": "error", "health_detail": "the pool did not answer"}

    async def _on_command(self, message: Message) -> dict[str, Any]:
        data = message.data
        action = str(data.get("action"))
        handler = self._handlers().get(action)
        if handler is None:
            return {
                "ok": False,
                "error": {"code": "InvalidSpec", "message": f"unknown action {action!r}"},
            }
        vm_id = str(
            data.get("vm_id") or (data.get("spec") or {}).get("id") or data.get("volume_id") or ""
        )
        lock = self._locks.setdefault(vm_id, asyncio.Lock())
        try:
            if action in READS:  # never queued behind a 60 s stop of the same VM
                result = await handler(data)
            else:
                async with lock:
                    result = await handler(data)
        except DriverError as exc:
            log.warning("driver refused", action=action, vm_id=vm_id, error=exc.message)
            return {"ok": False, "error": exc.as_dict()}
        except Exception as exc:
            log.exception("agent command crashed", action=action, vm_id=vm_id)
            return {"ok": False, "error": BackendFailure(f"{type(exc).__name__}: {exc}").as_dict()}
        return {"ok": True, **result}

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        c = self.compute

        def status(s: VmStatus | None) -> dict[str, Any]:
            return {"status": status_to_dict(s) if s is not None else None}

        async def ensure(d: dict[str, Any]) -> dict[str, Any]:
            spec = spec_from_dict(d["spec"])
            return status(await c.ensure_vm(spec, stop_timeout=float(d.get("stop_timeout", 60))))

        async def start(d: dict[str, Any]) -> dict[str, Any]:
            return status(await c.start_vm(d["vm_id"]))

        async def stop(d: dict[str, Any]) -> dict[str, Any]:
            return status(
                await c.stop_vm(
                    d["vm_id"], timeout=float(d.get("timeout", 60)), force=bool(d.get("force"))
                )
            )

        async def reboot(d: dict[str, Any]) -> dict[str, Any]:
            return status(await c.reboot_vm(d["vm_id"], hard=bool(d.get("hard"))))

        async def resize(d: dict[str, Any]) -> dict[str, Any]:
            return status(
                await c.resize_vm(
                    d["vm_id"], int(d["vcpus"]), int(d["memory_mib"]), live=bool(d.get("live"))
                )
            )

        async def reinstall(d: dict[str, Any]) -> dict[str, Any]:
            return status(await c.reinstall_vm(spec_from_dict(d["spec"])))

        async def set_password(d: dict[str, Any]) -> dict[str, Any]:
            await c.set_password(d["vm_id"], str(d.get("user") or "root"), d["password"])
            return {}

        async def console(d: dict[str, Any]) -> dict[str, Any]:
            return {"console": dataclasses.asdict(await c.console(d["vm_id"]))}

        async def console_output(d: dict[str, Any]) -> dict[str, Any]:
            lines = max(0, min(int(d.get("lines", 50)), MAX_CONSOLE_LINES))
            return {"output": c.console_output(d["vm_id"], lines)}

        async def vm_stats(d: dict[str, Any]) -> dict[str, Any]:
            return {"stats": stats_to_dict(await c.vm_stats(d["vm_id"]))}

        async def delete(d: dict[str, Any]) -> dict[str, Any]:
            await c.delete_vm(d["vm_id"])
            return {}

        async def get_vm(d: dict[str, Any]) -> dict[str, Any]:
            status = await c.get_vm(d["vm_id"])
            return {"status": None if status is None else status_to_dict(status)}

        async def list_vms(_d: dict[str, Any]) -> dict[str, Any]:
            return {"vms": [status_to_dict(v) for v in await c.list_vms()]}

        async def host_info(_d: dict[str, Any]) -> dict[str, Any]:
            return {"host": host_info_to_dict(await c.host_info())}

        return {
            "ensure_vm": ensure,
            "start_vm": start,
            "stop_vm": stop,
            "reboot_vm": reboot,
            "resize_vm": resize,
            "reinstall_vm": reinstall,
            "set_password": set_password,
            "console": console,
            "console_output": console_output,
            "vm_stats": vm_stats,
            "delete_vm": delete,
            "get_vm": get_vm,
            "list_vms": list_vms,
            "host_info": host_info,
            **live_handlers(c),  # disks, snapshots, live migration
            "export_disk": self.exports.begin,
            "read_export": self.exports.read,
            "end_export": self.exports.end,
            **self.transfers.handlers(),  # cold migration (agent/transfer_ops.py)
            **self.disks.handlers(),  # cloud disks (agent/disk_ops.py)
            **(self.network.handlers() if self.network is not None else {}),
        }
