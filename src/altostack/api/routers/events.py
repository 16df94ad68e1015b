"""The operation log: who did what, when, from where, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from altostack.api.deps import C, Ctx, Paging, permission
from altostack.api.schemas import PROBLEMS, EventOut, ListOf
from altostack.services.events import event_view

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get(
    "",
    response_model=ListOf[EventOut],
    name="event.list",
    openapi_extra=permission("event:read"),
    responses=PROBLEMS,
)
async def list_events(
    ctx: Ctx,
    c: C,
    page: Paging,
    since: Annotated[datetime | None, Query(description="RFC 3339, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="RFC 3339, exclusive")] = None,
    resource_id: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[
        str | None, Query(max_length=140, description="user id or tenant/user")
    ] = None,
    action: Annotated[str | None, Query(max_length=96)] = None,
    result: Literal["success", "failure"] | None = None,
    tenant_id: Annotated[str | None, Query(max_length=64, description="admins only")] = None,
) -> ListOf[EventOut]:
    """Events, newest first."""
    found = await c.events.list(
        ctx,
        since=since,
        until=until,
        resource_id=resource_id,
        actor=actor,
        action=action,
        result=result,
        tenant_id=tenant_id,
        limit=page.limit,
        cursor=page.cursor,
    )
    return ListOf[EventOut](
        items=[EventOut.model_validate(event_view(e)) for e in found.items],
        next_cursor=found.next_cursor,
    )
