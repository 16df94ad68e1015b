"""Asking a host agent something directly over the bus (no operation), for API reads.

Used by the VM-host reads (console output, counters) and the console proxy: one request
with the agent timeout; a silent agent is ``503`` with ``Retry-After``, a refusal that
describes the VM's state on its host is ``409`` (``driver_error`` names it), anything
else the host reports is ``503``.
"""

from __future__ import annotations

from typing import Any

from altostack.bus import Bus
from altostack.domain.agent_protocol import agent_subject, command
from altostack.domain.errors import Conflict, Unavailable

# Driver error codes that describe the VM's state on its host (not a broken host).
_STATE_CODES = frozenset({"VmNotFound", "InvalidState", "NotSupported"})


async def ask_agent(
    bus: Bus, host_id: str, action: str, *, timeout: float, **fields: Any
) -> dict[str, Any]:
    """One read-only command to a host agent; its refusals become domain errors."""
    try:
        reply = await bus.request(
            agent_subject(host_id), command(action, **fields), timeout=timeout
        )
    except TimeoutError:
        raise Unavailable(
            f"the agent of host {host_id} did not answer within {timeout:g} s; retry later",
            headers={"Retry-After": "5"},
        ) from None
    if reply.get("ok"):
        return reply
    error = reply.get("error") or {}
    code, message = str(error.get("code", "Error")), str(error.get("message", "unknown error"))
    if code in _STATE_CODES:
        raise Conflict(f"host {host_id}: {message}", extra={"driver_error": code})
    raise Unavailable(f"host {host_id} failed: {code}: {message}", headers={"Retry-After": "5"})
