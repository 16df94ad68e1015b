"""What a VM's host tells about it now: the serial console's tail and resource counters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from altostack.api.compute_schemas import ConsoleOutput, VmStatsOut
from altostack.api.deps import C, Ctx, permission
from altostack.api.schemas import PROBLEMS

router = APIRouter(tags=["vms"])


@router.get(
    "/v1/vms/{id}/console-output",
    response_model=ConsoleOutput,
    name="vm.console-output",
    openapi_extra=permission("vm:read"),
    responses=PROBLEMS,
)
async def console_output(
    id: str,
    ctx: Ctx,
    c: C,
    lines: Annotated[int, Query(ge=1, le=1000, description="How many last lines")] = 50,
) -> ConsoleOutput:
    """The last ``lines`` lines of the VM's serial console, across its boots (a guest that
    prints a readiness line shows it here). 409 while the VM has no host or its host has no
    such VM yet; 503 when the host's agent does not answer."""
    return ConsoleOutput.model_validate(await c.vm_host.console_output(ctx, id, lines))


@router.get(
    "/v1/vms/{id}/stats",
    response_model=VmStatsOut,
    name="vm.stats",
    openapi_extra=permission("vm:read"),
    responses=PROBLEMS,
)
async def stats(id: str, ctx: Ctx, c: C) -> VmStatsOut:
    """CPU time, memory, disk and network counters of a running (or paused) VM, read on its
    host now; cumulative since ``started_at``. 409 when the VM does not run."""
    return VmStatsOut.model_validate(await c.vm_host.stats(ctx, id))
