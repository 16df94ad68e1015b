"""Roles: built-in (owner, admin, operator, readonly) and custom per tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, permission
from altostack.api.identity_schemas import RoleCreate, RoleList, RoleOut, RoleUpdate
from altostack.api.schemas import PROBLEMS

router = APIRouter(prefix="/v1/roles", tags=["roles"])


@router.post(
    "",
    status_code=201,
    response_model=RoleOut,
    name="role.create",
    openapi_extra=permission("role:create"),
    responses=PROBLEMS,
)
async def create_role(body: RoleCreate, ctx: Ctx, c: C, response: Response) -> RoleOut:
    """A custom role: a list of ``<resource>:<action>`` permissions (``*`` allowed)."""
    out = await c.roles.create(ctx, body.name, body.permissions, body.description)
    response.headers["Location"] = f"/v1/roles/{out['id']}"
    return RoleOut.model_validate(out)


@router.get(
    "",
    response_model=RoleList,
    name="role.list",
    openapi_extra=permission("role:read"),
    responses=PROBLEMS,
)
async def list_roles(
    ctx: Ctx,
    c: C,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> RoleList:
    """Built-in roles first, then the tenant's custom roles."""
    return RoleList(items=[RoleOut.model_validate(r) for r in await c.roles.list(ctx, tenant_id)])


@router.get(
    "/{id}",
    response_model=RoleOut,
    name="role.get",
    openapi_extra=permission("role:read"),
    responses=PROBLEMS,
)
async def get_role(id: str, ctx: Ctx, c: C) -> RoleOut:
    return RoleOut.model_validate(await c.roles.get(ctx, id))


@router.patch(
    "/{id}",
    response_model=RoleOut,
    name="role.update",
    openapi_extra=permission("role:update"),
    responses=PROBLEMS,
)
async def update_role(id: str, body: RoleUpdate, ctx: Ctx, c: C) -> RoleOut:
    """Change a custom role; users holding it get the new rights at once."""
    return RoleOut.model_validate(await c.roles.update(ctx, id, body.permissions, body.description))


@router.delete(
    "/{id}",
    status_code=204,
    name="role.delete",
    openapi_extra=permission("role:delete"),
    responses=PROBLEMS,
)
async def delete_role(id: str, ctx: Ctx, c: C) -> Response:
    """Delete a custom role that no user holds."""
    await c.roles.delete(ctx, id)
    return Response(status_code=204)
