"""Quotas: limits and usage per tenant (and region)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from altostack.api.deps import C, Ctx, permission
from altostack.api.identity_schemas import QuotaOut, QuotaSet
from altostack.api.schemas import PROBLEMS

router = APIRouter(prefix="/v1/quotas", tags=["quotas"])


@router.get(
    "",
    response_model=QuotaOut,
    name="quota.get",
    openapi_extra=permission("quota:read"),
    responses=PROBLEMS,
)
async def get_quotas(
    ctx: Ctx,
    c: C,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins: any tenant")] = None,
) -> QuotaOut:
    """Limit and usage of every quota of a tenant (one's own by default)."""
    return QuotaOut.model_validate(await c.quotas.show(ctx, tenant_id))


@router.put(
    "/{tenant_id}",
    response_model=QuotaOut,
    name="quota.update",
    openapi_extra=permission("quota:update"),
    responses=PROBLEMS,
)
async def set_quotas(tenant_id: str, body: QuotaSet, ctx: Ctx, c: C) -> QuotaOut:
    """Platform administrators override limits (``null`` returns one to the default, -1
    is unlimited). Lowering a limit below usage touches no existing resource."""
    limits = body.model_dump(exclude_unset=True)
    return QuotaOut.model_validate(await c.quotas.set_limits(ctx, tenant_id, limits))
