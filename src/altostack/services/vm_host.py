"""What a VM's host can tell about it right now: serial console output and counters.

These reads are not operations: the API asks the VM's host agent directly over the bus
(a request with a short timeout) and answers with what the agent saw. An agent that does
not answer is ``503`` (retry later), a VM without a host yet, or one its host does not
have or cannot count in its state, is ``409``.
"""

from __future__ import annotations

from typing import Any

from altostack.bus import Bus
from altostack.db.database import Database
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.services.agent_calls import ask_agent
from altostack.services.context import RequestContext
from altostack.services.vms import VmService

DEFAULT_CONSOLE_LINES = 50
MAX_CONSOLE_LINES = 1000


class VmHostService:
    def __init__(self, db: Database, bus: Bus, vms: VmService, *, agent_timeout: float) -> None:
        self.db = db
        self.bus = bus
        self.vms = vms
        self.agent_timeout = agent_timeout

    async def _host_of(self, ctx: RequestContext, vm_id: str, what: str) -> tuple[str, str]:
        async with self.db.uow(write=False) as uow:
            vm = await self.vms.load(uow, ctx, vm_id, "vm:read")
        if not vm.host_id:
            raise Conflict(
                f"VM {vm.id} has no host yet, so no {what}", extra={"current_state": vm.state}
            )
        return vm.id, vm.host_id

    async def console_output(
        self, ctx: RequestContext, vm_id: str, lines: int = DEFAULT_CONSOLE_LINES
    ) -> dict[str, Any]:
        """The tail of the VM's serial console (like OpenStack's get-console-output)."""
        if not 1 <= lines <= MAX_CONSOLE_LINES:
            raise InvalidRequest.for_field("lines", f"must be between 1 and {MAX_CONSOLE_LINES}")
        vm_id, host_id = await self._host_of(ctx, vm_id, "console")
        reply = await ask_agent(
            self.bus, host_id, "console_output", timeout=self.agent_timeout, vm_id=vm_id,
            lines=lines,
        )  # fmt: skip
        output = str(reply.get("output") or "")
        lines_out = len(output.splitlines())
        return {"vm_id": vm_id, "host_id": host_id, "lines": lines_out, "output": output}

    async def stats(self, ctx: RequestContext, vm_id: str) -> dict[str, Any]:
        """CPU, memory, disk and network counters of a running VM, read on its host now."""
        vm_id, host_id = await self._host_of(ctx, vm_id, "counters")
        reply = await ask_agent(
            self.bus, host_id, "vm_stats", timeout=self.agent_timeout, vm_id=vm_id
        )
        stats = dict(reply.get("stats") or {})
        stats.pop("id", None)
        return {"vm_id": vm_id, "host_id": host_id, **stats}
