"""How a network change reaches the hosts: bump the VPC's generation and queue a push.

Every change the data plane must see (a NIC attached, a rule added, an EIP bound, a NAT
rule) calls :func:`queue_push` in its own transaction: the VPCs' ``generation`` goes up
and an operation is queued whose handler (``controllers/network_sync.py``) reads the
VPC as committed and sends idempotent commands to every host concerned. The push is
level-triggered, so pushes that overlap converge on the newest state; agents ignore a
command older than the generation they already applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update

from altostack.db.models import Operation
from altostack.db.models_network import Vpc
from altostack.db.uow import UnitOfWork
from altostack.services.context import RequestContext
from altostack.services.operations import OperationService

PUSH_KINDS = (
    "network.sync",
    "nic.attach",
    "nic.detach",
    "eip.bind",
    "eip.unbind",
    "nat_gateway.create",
    "nat_gateway.update",
    "nat_gateway.delete",
)
"""Operation kinds whose handler pushes ``input.vpc_ids`` to the hosts."""


async def bump(uow: UnitOfWork, vpc_ids: Iterable[str]) -> list[str]:
    ids = sorted({v for v in vpc_ids if v})
    if ids:
        await uow.session.execute(
            update(Vpc)
            .where(Vpc.id.in_(ids))
            .values(generation=Vpc.generation + 1)
            .execution_options(synchronize_session=False)
        )
    return ids


async def queue_push(
    uow: UnitOfWork,
    operations: OperationService,
    ctx: RequestContext,
    vpc_ids: Iterable[str],
    *,
    kind: str = "network.sync",
    resource_type: str = "vpc",
    resource_id: str | None = None,
    tenant_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Operation:
    """Bump the VPCs and queue the operation that pushes them (in the caller's uow)."""
    assert kind in PUSH_KINDS, kind
    ids = await bump(uow, vpc_ids)
    return operations.create(
        uow,
        ctx,
        kind,
        resource_type=resource_type,
        resource_id=resource_id or (ids[0] if ids else None),
        input={"vpc_ids": ids, **(extra or {})},
        tenant_id=tenant_id,
    )
