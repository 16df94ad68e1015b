"""API keys: access key id + secret for signed requests (secret shown once)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.identity_schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut
from altostack.api.schemas import PROBLEMS, ListOf
from altostack.services.apikeys import key_view

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    name="apikey.create",
    openapi_extra=permission("apikey:create"),
    responses=PROBLEMS,
)
async def create_key(body: ApiKeyCreate, ctx: Ctx, c: C, response: Response) -> ApiKeyCreated:
    """Create a key for the caller; the secret is in this response only."""
    out = await c.api_keys.create(
        ctx, description=body.description, expires_at=body.expires_at, role=body.role
    )
    response.headers["Location"] = f"/v1/api-keys/{out['id']}"
    return ApiKeyCreated.model_validate(out)


@router.get(
    "",
    response_model=ListOf[ApiKeyOut],
    name="apikey.list",
    openapi_extra=permission("apikey:read"),
    responses=PROBLEMS,
)
async def list_keys(
    ctx: Ctx,
    c: C,
    page: Paging,
    user_id: Annotated[str | None, Query(max_length=40)] = None,
    status: Literal["active", "revoked"] | None = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[ApiKeyOut]:
    found = await c.api_keys.list(
        ctx,
        user_id=user_id,
        status=status,
        tenant_id=tenant_id,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[ApiKeyOut](
        items=[ApiKeyOut.model_validate(key_view(k)) for k in found.items],
        next_cursor=found.next_cursor,
    )


@router.get(
    "/{id}",
    response_model=ApiKeyOut,
    name="apikey.get",
    openapi_extra=permission("apikey:read"),
    responses=PROBLEMS,
)
async def get_key(id: str, ctx: Ctx, c: C) -> ApiKeyOut:
    return ApiKeyOut.model_validate(await c.api_keys.get(ctx, id))


@router.delete(
    "/{id}",
    status_code=204,
    name="apikey.delete",
    openapi_extra=permission("apikey:delete"),
    responses=PROBLEMS,
)
async def revoke_key(id: str, ctx: Ctx, c: C) -> Response:
    """Revoke a key; requests signed with it fail from this moment."""
    await c.api_keys.revoke(ctx, id)
    return Response(status_code=204)
