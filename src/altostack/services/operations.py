"""Operations: the durable record of every asynchronous mutation (the outbox).

A service that changes a spec calls :meth:`OperationService.create` inside the same unit
of work, so the spec change and its operation commit together or not at all. The worker
(``controllers.worker``) picks the operation up from the table, so nothing is lost if the
bus notification that follows the commit never arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, insert
from sqlalchemy.orm.attributes import manager_of_class

from altostack.bus import Bus, Message
from altostack.db.database import Database, PointReader
from altostack.db.models import Operation
from altostack.db.repositories import Page
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import InvalidRequest
from altostack.domain.ids import new_id
from altostack.domain.operations import OperationState
from altostack.services import authz
from altostack.services.context import RequestContext

# Built once: ``insert(table)`` per call costs its construction and a cache key each time.
_INSERT_OPERATION = insert(cast(Table, Operation.__table__))
CREATED_SUBJECT = "operations.created"
FINISHED_SUBJECT = "operations.finished"
MAX_WAIT_SECONDS = 60.0


class OperationService:
    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self._rendered: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    async def start(self) -> None:
        await self.bus.subscribe(FINISHED_SUBJECT, self._on_finished)

    async def _on_finished(self, message: Message) -> None:
        for event in self._waiters.get(str(message.data.get("id")), []):
            event.set()

    def create(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        kind: str,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        input: dict[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> Operation:
        """Add an operation to ``uow``; it becomes visible to workers when ``uow`` commits."""
        op = Operation(
            id=new_id("op"),
            kind=kind,
            tenant_id=tenant_id or ctx.principal.tenant_id,
            resource_type=resource_type,
            resource_id=resource_id,
            state=OperationState.PENDING.value,
            progress=0,
            input=input or {},
            checkpoint={},
            attempts=0,
            created_by=ctx.principal.user_id,
            request_id=ctx.request_id,
        )
        uow.operations.add(op)
        ctx.audit.operation_id = op.id

        async def _notify() -> None:
            await self.bus.publish(CREATED_SUBJECT, {"id": op.id, "kind": kind})

        uow.after_commit(_notify)
        return op

    async def create_many(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        kind: str,
        *,
        resource_type: str,
        resources: Sequence[tuple[str, dict[str, Any]]],
        tenant_id: str | None = None,
    ) -> list[Operation]:
        """``create`` for a batch (``(resource_id, input)`` pairs): one Core INSERT
        (executemany) instead of one ORM object per operation and the session's flush
        bookkeeping, which cost more than the rows themselves in a batch VM create. The
        objects returned are answers for the caller, not tracked by the session."""
        now = utcnow()
        rows = [
            dict(
                id=new_id("op"),
                kind=kind,
                tenant_id=tenant_id or ctx.principal.tenant_id,
                resource_type=resource_type,
                resource_id=resource_id,
                state=OperationState.PENDING.value,
                progress=0,
                input=input_,
                checkpoint={},
                result=None,
                error=None,
                attempts=0,
                lease_owner=None,
                lease_expires_at=None,
                not_before=now,
                created_by=ctx.principal.user_id,
                request_id=ctx.request_id,
                created_at=now,
                updated_at=now,
                started_at=None,
                finished_at=None,
            )
            for resource_id, input_ in resources
        ]
        if not rows:
            return []
        conn = await uow.connection()
        await conn.execute(_INSERT_OPERATION, rows)
        new_op = manager_of_class(Operation).new_instance
        ops = []
        for row in rows:
            op = new_op()
            op.__dict__.update(row)
            ops.append(op)
        ctx.audit.operation_id = ops[-1].id

        async def _notify() -> None:
            for op in ops:
                await self.bus.publish(CREATED_SUBJECT, {"id": op.id, "kind": kind})

        uow.after_commit(_notify)
        return ops

    async def get(self, ctx: RequestContext, op_id: str) -> Operation:
        async with self.db.uow(write=False) as uow:
            op = await uow.operations.get(op_id)
        authz.require(
            ctx,
            "operation:read",
            tenant_id=op.tenant_id if op else None,
            kind="operation",
            ident=op_id,
        )
        assert op is not None
        return op

    async def view(self, ctx: RequestContext, op_id: str) -> dict[str, Any]:
        """The operation as the API shows it, by the cheapest read the database allows."""
        reader = self.db.point_reader
        if reader is None:
            return operation_view(await self.get(ctx, op_id))
        return _sqlite_view(self._read_raw(ctx, reader, op_id))

    def _read_raw(self, ctx: RequestContext, reader: PointReader, op_id: str) -> tuple[Any, ...]:
        raw = reader.values(_VIEW_SQL, (op_id,))
        authz.require(
            ctx,
            "operation:read",
            tenant_id=raw[2] if raw else None,
            kind="operation",
            ident=op_id,
        )
        assert raw is not None
        return raw

    async def view_rendered(
        self, ctx: RequestContext, op_id: str, render: Callable[[dict[str, Any]], bytes]
    ) -> bytes:
        """The operation as the API shows it, rendered by ``render``, by the cheapest read
        the database allows.

        The row is read every time (a poller must see each change at once), but rendering
        an unchanged row again would only repeat the same bytes, so the last rendering of
        each recently polled operation is kept with the raw row it came from.
        """
        reader = self.db.point_reader
        if reader is None:
            return render(operation_view(await self.get(ctx, op_id)))
        raw = self._read_raw(ctx, reader, op_id)
        memo = self._rendered.get(op_id)
        if memo is not None and memo[0] == raw:
            return memo[1]
        body = render(_sqlite_view(raw))
        if len(self._rendered) >= _RENDERED_MAX:
            del self._rendered[next(iter(self._rendered))]
        self._rendered[op_id] = (raw, body)
        return body

    async def wait(self, ctx: RequestContext, op_id: str, seconds: float) -> Operation:
        """Long-poll: return when the operation ends or ``seconds`` pass, whichever first."""
        if seconds < 0 or seconds > MAX_WAIT_SECONDS:
            raise InvalidRequest.for_field("wait", f"must be between 0 and {MAX_WAIT_SECONDS:g}")
        op = await self.get(ctx, op_id)
        deadline = time.monotonic() + seconds
        event = asyncio.Event()
        self._waiters.setdefault(op_id, []).append(event)
        try:
            while not OperationState(op.state).finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # The bus wakes us at once in this process; the re-read every second
                # covers operations finished by a worker in another process.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, 1.0))
                event.clear()
                op = await self.get(ctx, op_id)
        finally:
            waiters = self._waiters.get(op_id, [])
            if event in waiters:
                waiters.remove(event)
            if not waiters:
                self._waiters.pop(op_id, None)
        return op

    async def list(
        self,
        ctx: RequestContext,
        *,
        resource_id: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        tenant_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Operation]:
        authz.require(ctx, "operation:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(Operation.tenant_id == target)
        if resource_id:
            where.append(Operation.resource_id == resource_id)
        if state:
            where.append(Operation.state == state)
        if kind:
            where.append(Operation.kind == kind)
        async with self.db.uow(write=False) as uow:
            return await uow.operations.page(where, limit=limit, cursor=cursor)


_VIEW_COLUMNS = (
    "id, kind, tenant_id, resource_type, resource_id, state, progress, attempts, error, "
    "result, request_id, created_at, started_at, finished_at"
)


_VIEW_SQL = f"SELECT {_VIEW_COLUMNS} FROM operations WHERE id = ?"
_VIEW_NAMES = tuple(name.strip() for name in _VIEW_COLUMNS.split(","))
_RENDERED_MAX = 4096


def _sqlite_view(raw: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(_VIEW_NAMES, raw, strict=True))
    for name in ("created_at", "started_at", "finished_at"):
        row[name] = _sqlite_time(row[name])
    for name in ("error", "result"):
        row[name] = json.loads(row[name]) if row[name] is not None else None
    return row


def _sqlite_time(value: str | None) -> datetime | None:
    """SQLite keeps UTC times as naive ISO text (see db.types.UTCDateTime)."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def operation_view(op: Operation) -> dict[str, Any]:
    """The operation as API.md shows it."""
    return {
        "id": op.id,
        "kind": op.kind,
        "tenant_id": op.tenant_id,
        "resource_type": op.resource_type,
        "resource_id": op.resource_id,
        "state": op.state,
        "progress": op.progress,
        "attempts": op.attempts,
        "error": op.error,
        "result": op.result,
        "request_id": op.request_id,
        "created_at": op.created_at,
        "started_at": op.started_at,
        "finished_at": op.finished_at,
    }
