"""Users: the tenant owner and sub-accounts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.identity_schemas import (
    PasswordChange,
    PasswordReset,
    UserCreate,
    UserOut,
    UserUpdate,
)
from altostack.api.schemas import PROBLEMS, ListOf
from altostack.services.users import user_view

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.post(
    "",
    status_code=201,
    response_model=UserOut,
    name="user.create",
    openapi_extra=permission("user:create"),
    responses=PROBLEMS,
)
async def create_user(body: UserCreate, ctx: Ctx, c: C, response: Response) -> UserOut:
    out = await c.users.create(
        ctx,
        username=body.username,
        password=body.password,
        role=body.role,
        tenant_id=body.tenant_id,
        scope_tags=body.scope_tags,
    )
    response.headers["Location"] = f"/v1/users/{out['id']}"
    return UserOut.model_validate(out)


@router.get(
    "",
    response_model=ListOf[UserOut],
    name="user.list",
    openapi_extra=permission("user:read"),
    responses=PROBLEMS,
)
async def list_users(
    ctx: Ctx,
    c: C,
    page: Paging,
    status: Literal["active", "disabled"] | None = None,
    role: Annotated[str | None, Query(max_length=64)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
    tenant_id: Annotated[str | None, Query(max_length=40, description="admins only")] = None,
) -> ListOf[UserOut]:
    found = await c.users.list(
        ctx,
        tenant_id=tenant_id,
        status=status,
        role=role,
        username=username,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[UserOut](
        items=[UserOut.model_validate(user_view(u)) for u in found.items],
        next_cursor=found.next_cursor,
    )


@router.post(
    "/me/actions/change-password", status_code=204, name="user.change-password", responses=PROBLEMS
)
async def change_password(body: PasswordChange, ctx: Ctx, c: C) -> Response:
    """Change one's own password; other sessions of the user are logged out."""
    await c.users.change_own_password(ctx, body.old_password, body.new_password)
    return Response(status_code=204)


@router.get(
    "/{id}",
    response_model=UserOut,
    name="user.get",
    openapi_extra=permission("user:read"),
    responses=PROBLEMS,
)
async def get_user(id: str, ctx: Ctx, c: C) -> UserOut:
    """A user; ``me`` is the caller."""
    return UserOut.model_validate(await c.users.get(ctx, id))


@router.patch(
    "/{id}",
    response_model=UserOut,
    name="user.update",
    openapi_extra=permission("user:update"),
    responses=PROBLEMS,
)
async def update_user(id: str, body: UserUpdate, ctx: Ctx, c: C) -> UserOut:
    """Change a user's role or tag scope."""
    out = await c.users.update(ctx, id, role=body.role, scope_tags=body.scope_tags)
    return UserOut.model_validate(out)


@router.post(
    "/{id}/actions/disable",
    response_model=UserOut,
    name="user.disable",
    openapi_extra=permission("user:disable"),
    responses=PROBLEMS,
)
async def disable_user(id: str, ctx: Ctx, c: C) -> UserOut:
    """Block the user; their tokens and keys stop working at once."""
    return UserOut.model_validate(await c.users.set_status(ctx, id, "disabled"))


@router.post(
    "/{id}/actions/enable",
    response_model=UserOut,
    name="user.enable",
    openapi_extra=permission("user:enable"),
    responses=PROBLEMS,
)
async def enable_user(id: str, ctx: Ctx, c: C) -> UserOut:
    return UserOut.model_validate(await c.users.set_status(ctx, id, "active"))


@router.post(
    "/{id}/actions/reset-password",
    response_model=UserOut,
    name="user.reset-password",
    openapi_extra=permission("user:reset-password"),
    responses=PROBLEMS,
)
async def reset_password(id: str, body: PasswordReset, ctx: Ctx, c: C) -> UserOut:
    """Set a new password for another user; their sessions end."""
    return UserOut.model_validate(await c.users.reset_password(ctx, id, body.password))


@router.delete(
    "/{id}",
    status_code=204,
    name="user.delete",
    openapi_extra=permission("user:delete"),
    responses=PROBLEMS,
)
async def delete_user(id: str, ctx: Ctx, c: C) -> Response:
    await c.users.delete(ctx, id)
    return Response(status_code=204)
