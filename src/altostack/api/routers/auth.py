"""Sessions: log in for a bearer token, log out to revoke it."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from altostack.api.deps import C, Ctx
from altostack.api.schemas import PROBLEMS, TokenOut, TokenRequest, UserBrief
from altostack.services.auth import principal_for
from altostack.services.context import RequestContext

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post(
    "/tokens",
    response_model=TokenOut,
    status_code=201,
    name="auth.login",
    responses=PROBLEMS,
)
async def login(body: TokenRequest, c: C, request: Request) -> TokenOut:
    """Exchange tenant + username + password for a bearer token."""
    state = request.scope["state"]
    state["audit_details"] = {"tenant": body.tenant, "username": body.username}
    client = request.client
    issued = await c.auth.login(
        body.tenant, body.username, body.password, client.host if client else None
    )
    state["ctx"] = RequestContext(
        principal_for(issued.user, issued.tenant, "password", None),
        state["request_id"],
        client.host if client else None,
    )
    return TokenOut(
        token=issued.token,
        expires_at=issued.expires_at,
        user=UserBrief(
            id=issued.user.id,
            username=issued.user.username,
            tenant_id=issued.tenant.id,
            tenant_name=issued.tenant.name,
            role=issued.user.role,
            is_platform_admin=issued.user.is_platform_admin,
        ),
    )


@router.delete("/tokens/current", status_code=204, name="auth.logout", responses=PROBLEMS)
async def logout(ctx: Ctx, c: C, request: Request) -> Response:
    """Revoke the token this request was made with."""
    header = request.headers.get("authorization", "")
    await c.auth.logout(header.partition(" ")[2].strip())
    ctx.audit.resource_type = "auth"
    return Response(status_code=204)


@router.get("/whoami", response_model=UserBrief, name="auth.whoami", responses=PROBLEMS)
async def whoami(ctx: Ctx) -> UserBrief:
    """Who the credentials in this request belong to."""
    p = ctx.principal
    return UserBrief(
        id=p.user_id,
        username=p.username,
        tenant_id=p.tenant_id,
        tenant_name=p.tenant_name,
        role=p.role,
        is_platform_admin=p.is_platform_admin,
    )
