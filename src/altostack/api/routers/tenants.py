"""Tenants (platform administrators): create, freeze, unfreeze, delete when empty."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.identity_schemas import TenantCreate, TenantOut
from altostack.api.schemas import PROBLEMS, ListOf
from altostack.services.tenants import tenant_view

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post(
    "",
    status_code=201,
    response_model=TenantOut,
    name="tenant.create",
    openapi_extra=permission("tenant:create"),
    responses=PROBLEMS,
)
async def create_tenant(body: TenantCreate, ctx: Ctx, c: C, response: Response) -> TenantOut:
    """Create a tenant and its owner account."""
    out = await c.tenants.create(
        ctx, body.name, body.contact_email, body.owner.username, body.owner.password
    )
    response.headers["Location"] = f"/v1/tenants/{out['id']}"
    return TenantOut.model_validate(out)


@router.get(
    "",
    response_model=ListOf[TenantOut],
    name="tenant.list",
    openapi_extra=permission("tenant:read"),
    responses=PROBLEMS,
)
async def list_tenants(
    ctx: Ctx,
    c: C,
    page: Paging,
    status: Literal["active", "frozen"] | None = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
) -> ListOf[TenantOut]:
    found = await c.tenants.list(
        ctx, status=status, name=name, limit=page.limit, cursor=page.cursor
    )
    return ListOf[TenantOut](
        items=[TenantOut.model_validate(tenant_view(t)) for t in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/{id}",
    response_model=TenantOut,
    name="tenant.get",
    openapi_extra=permission("tenant:read"),
    responses=PROBLEMS,
)
async def get_tenant(id: str, ctx: Ctx, c: C) -> TenantOut:
    """A tenant: any tenant for platform administrators, one's own for everyone else."""
    return TenantOut.model_validate(await c.tenants.get(ctx, id))


@router.post(
    "/{id}/actions/freeze",
    response_model=TenantOut,
    name="tenant.freeze",
    openapi_extra=permission("tenant:freeze"),
    responses=PROBLEMS,
)
async def freeze_tenant(id: str, ctx: Ctx, c: C) -> TenantOut:
    """Refuse every mutation by the tenant; its resources keep running."""
    return TenantOut.model_validate(await c.tenants.set_status(ctx, id, "frozen"))


@router.post(
    "/{id}/actions/unfreeze",
    response_model=TenantOut,
    name="tenant.unfreeze",
    openapi_extra=permission("tenant:unfreeze"),
    responses=PROBLEMS,
)
async def unfreeze_tenant(id: str, ctx: Ctx, c: C) -> TenantOut:
    return TenantOut.model_validate(await c.tenants.set_status(ctx, id, "active"))


@router.delete(
    "/{id}",
    status_code=204,
    name="tenant.delete",
    openapi_extra=permission("tenant:delete"),
    responses=PROBLEMS,
)
async def delete_tenant(id: str, ctx: Ctx, c: C) -> Response:
    """Delete a tenant that has no resources left (its users and keys go with it)."""
    await c.tenants.delete(ctx, id)
    return Response(status_code=204)
