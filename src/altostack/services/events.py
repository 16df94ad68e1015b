"""The operation log (audit trail): every mutation, successful or not.

Failed mutations roll back their own transaction, so their event is written in a
separate one; successful ones are written inside the request's transaction, so an event
exists exactly when the change does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement

from altostack.db.database import Database
from altostack.db.models import Event
from altostack.db.repositories import Page
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.context import Principal, RequestContext

RESULTS = ("success", "failure")


def build_event(
    *,
    principal: Principal | None,
    action: str,
    result: str,
    request_id: str | None = None,
    source_ip: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    status_code: int | None = None,
    failure_reason: str | None = None,
    operation_id: str | None = None,
    tenant_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    return Event(
        id=new_id("evt"),
        tenant_id=tenant_id or (principal.tenant_id if principal else None),
        actor_id=principal.user_id if principal else None,
        actor_name=principal.display if principal else None,
        auth_method=principal.auth_method if principal else None,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        result=result,
        status_code=status_code,
        failure_reason=failure_reason,
        request_id=request_id,
        source_ip=source_ip,
        operation_id=operation_id,
        details=details or {},
    )


class EventService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, uow: UnitOfWork, event: Event) -> None:
        uow.events.add(event)

    async def record(self, event: Event) -> None:
        """Write an event in a transaction of its own (for failures and background work)."""
        async with self.db.uow() as uow:
            uow.events.add(event)
            await uow.commit()

    async def list(
        self,
        ctx: RequestContext,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        resource_id: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        result: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Event]:
        if result is not None and result not in RESULTS:
            raise InvalidRequest.for_field("result", f"must be one of {', '.join(RESULTS)}")
        since, until = _utc(since, "since"), _utc(until, "until")
        if since and until and since > until:
            raise InvalidRequest.for_field("since", "must not be after 'until'")
        authz.require(ctx, "event:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(Event.tenant_id == target)
        if since:
            where.append(Event.time >= since)
        if until:
            where.append(Event.time < until)
        if resource_id:
            where.append(Event.resource_id == resource_id)
        if actor:
            where.append((Event.actor_id == actor) | (Event.actor_name == actor))
        if action:
            where.append(Event.action == action)
        if result:
            where.append(Event.result == result)
        async with self.db.uow(write=False) as uow:
            return await uow.events.page(where, limit=limit, cursor=cursor)


def _utc(value: datetime | None, field: str) -> datetime | None:
    """The time in UTC; times without a zone are taken as UTC, as API.md's timestamps are
    (comparing a zoned and a naive time would be a TypeError, a 500)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidRequest.for_field(field, "is out of range once converted to UTC") from None


def event_view(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": event.time,
        "tenant_id": event.tenant_id,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "auth_method": event.auth_method,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "action": event.action,
        "result": event.result,
        "status_code": event.status_code,
        "failure_reason": event.failure_reason,
        "request_id": event.request_id,
        "source_ip": event.source_ip,
        "operation_id": event.operation_id,
        "details": event.details,
    }
