"""The operation worker: takes operations from the table and runs their handlers.

Claims are leases: a worker writes its owner id and an expiry, renews it while the handler
runs, and loses the operation if it stops renewing (killed, hung, partitioned). Another
worker, or this one after a restart, then takes it over and the handler resumes from its
last checkpoint. After ``operation_max_attempts`` claims the operation fails with the last
reason, so a poison operation cannot loop forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

import structlog

from altostack.bus import Bus, Message
from altostack.controllers.registry import LeaseLost, OperationContext, OperationRegistry
from altostack.db.database import Database
from altostack.db.models import Operation
from altostack.db.types import utcnow
from altostack.domain.operations import OperationState, PermanentError, TemporaryError
from altostack.services.events import EventService, build_event
from altostack.services.operations import CREATED_SUBJECT, FINISHED_SUBJECT
from altostack.settings import Settings

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 60.0


class OperationWorker:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        registry: OperationRegistry,
        settings: Settings,
        events: EventService,
    ) -> None:
        self.db = db
        self.bus = bus
        self.registry = registry
        self.settings = settings
        self.events = events
        self.hostname = socket.gethostname()
        self.owner = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.operation_lease_seconds)

    async def start(self) -> None:
        await self.bus.subscribe(CREATED_SUBJECT, self._on_created)
        await self.recover_orphans()
        self._loop_task = asyncio.create_task(self._loop(), name="operation-worker")

    async def _on_created(self, _message: Message) -> None:
        self._wake.set()

    async def recover_orphans(self) -> int:
        """Free operations whose owner was a process on this host that no longer exists,
        so a restarted all-in-one resumes them at once instead of after the lease."""
        freed = 0
        async with self.db.uow() as uow:
            page = await uow.operations.page([Operation.state == "running"], limit=500)
            for op in page.items:
                if op.lease_owner and _dead_local_owner(op.lease_owner, self.hostname):
                    op.lease_expires_at = utcnow() - timedelta(seconds=1)
                    freed += 1
            await uow.commit()
        if freed:
            log.info("recovered operations of a dead worker", count=freed)
        return freed

    async def _loop(self) -> None:
        while not self._stopping:
            # Clear before polling: a notification that arrives during the poll must
            # trigger another poll at once, not wait out the interval.
            self._wake.clear()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("operation poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.worker_poll_seconds)

    async def poll_once(self) -> int:
        """Claim what is due, up to the free concurrency; returns how many were started."""
        free = self.settings.worker_concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return 0
        now = utcnow()
        async with self.db.uow(write=False) as uow:
            candidates = await uow.operations.claimable(self.registry.kinds(), now, free)
        started = 0
        for op_id, _state in candidates:
            if op_id in self._running:
                continue
            op = await self._claim(op_id)
            if op is None:
                continue
            task = asyncio.create_task(self._execute(op), name=f"op-{op.id}")
            self._running[op.id] = task
            task.add_done_callback(self._forget)
            started += 1
        return started

    def _forget(self, task: asyncio.Task[None]) -> None:
        for op_id, running in list(self._running.items()):
            if running is task:
                del self._running[op_id]
        self._wake.set()  # a slot is free: look for queued work now, not at the next tick

    async def _claim(self, op_id: str) -> Operation | None:
        now = utcnow()
        async with self.db.uow() as uow:
            if not await uow.operations.try_claim(op_id, self.owner, now, now + self.lease):
                return None
            await uow.commit()
        async with self.db.uow(write=False) as uow:
            return await uow.operations.get(op_id)

    async def _execute(self, op: Operation) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(operation_id=op.id, request_id=op.request_id)
        handler = self.registry.get(op.kind)
        ctx = OperationContext(
            id=op.id,
            kind=op.kind,
            tenant_id=op.tenant_id,
            resource_type=op.resource_type,
            resource_id=op.resource_id,
            input=dict(op.input or {}),
            checkpoint=dict(op.checkpoint or {}),
            attempt=op.attempts,
            worker=self,
        )
        if handler is None:  # registry changed under us; leave it for a worker that knows it
            await self._release(ctx)
            return
        last_error = (op.error or {}).get("message")
        if op.attempts > self.settings.operation_max_attempts:
            await self._finish(
                ctx,
                OperationState.FAILED,
                error={
                    "code": "TooManyAttempts",
                    "message": f"gave up after {op.attempts - 1} attempts"
                    + (f"; last error: {last_error}" if last_error else ""),
                },
            )
            return
        log.info("operation started", kind=op.kind, attempt=op.attempts)
        renewer = asyncio.create_task(self._renew(ctx, asyncio.current_task()))
        try:
            result = await handler(ctx)
        except asyncio.CancelledError:
            renewer.cancel()
            if not self._stopping:
                log.warning("operation lost its lease; another worker will resume it")
                raise
            await asyncio.shield(self._release(ctx))
            raise
        except LeaseLost:
            log.warning("operation lost its lease; another worker will resume it")
            return
        except PermanentError as exc:
            await self._finish(
                ctx, OperationState.FAILED, error={"code": exc.code, "message": str(exc)}
            )
        except TemporaryError as exc:
            await self._retry(ctx, str(exc), exc.delay)
        except Exception as exc:
            log.exception("operation handler crashed")
            await self._retry(ctx, f"internal error: {type(exc).__name__}: {exc}", 1.0)
        else:
            await self._finish(ctx, OperationState.SUCCEEDED, result=result or {})
        finally:
            renewer.cancel()

    async def _renew(self, ctx: OperationContext, task: asyncio.Task[Any] | None) -> None:
        interval = self.settings.operation_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.uow() as uow:
                    ok = await uow.operations.update_owned(
                        ctx.id, self.owner, lease_expires_at=utcnow() + self.lease
                    )
                    await uow.commit()
            except Exception:
                log.exception("lease renewal failed")
                continue
            if not ok and task is not None:
                task.cancel()
                return

    async def save_progress(self, ctx: OperationContext, percent: int) -> None:
        async with self.db.uow() as uow:
            ok = await uow.operations.update_owned(
                ctx.id,
                self.owner,
                progress=percent,
                checkpoint=ctx.checkpoint,
                lease_expires_at=utcnow() + self.lease,
            )
            await uow.commit()
        if not ok:
            raise LeaseLost(ctx.id)

    async def _release(self, ctx: OperationContext) -> None:
        """Give the operation back untouched (shutdown): the next worker resumes it."""
        async with self.db.uow() as uow:
            await uow.operations.update_owned(
                ctx.id,
                self.owner,
                state=OperationState.PENDING.value,
                lease_owner=None,
                lease_expires_at=None,
                attempts=max(ctx.attempt - 1, 0),
            )
            await uow.commit()
        log.info("operation released for resumption")

    async def _retry(self, ctx: OperationContext, message: str, delay: float) -> None:
        if ctx.attempt >= self.settings.operation_max_attempts:
            await self._finish(
                ctx,
                OperationState.FAILED,
                error={
                    "code": "TooManyAttempts",
                    "message": f"failed after {ctx.attempt} attempts: {message}",
                },
            )
            return
        backoff = min(delay * 2 ** (ctx.attempt - 1), MAX_BACKOFF_SECONDS)
        async with self.db.uow() as uow:
            await uow.operations.update_owned(
                ctx.id,
                self.owner,
                state=OperationState.PENDING.value,
                lease_owner=None,
                lease_expires_at=None,
                not_before=utcnow() + timedelta(seconds=backoff),
                error={"code": "Retrying", "message": message},
            )
            await uow.commit()
        log.warning("operation will be retried", reason=message, after_seconds=backoff)

    async def _finish(
        self,
        ctx: OperationContext,
        state: OperationState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        now = utcnow()
        async with self.db.uow() as uow:
            values: dict[str, Any] = {
                "state": state.value,
                "finished_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "result": result,
                "error": error,
            }
            if state is OperationState.SUCCEEDED:
                values["progress"] = 100
            if not await uow.operations.update_owned(ctx.id, self.owner, **values):
                return
            uow.events.add(
                build_event(
                    principal=None,
                    tenant_id=ctx.tenant_id,
                    action=ctx.kind,
                    result="success" if state is OperationState.SUCCEEDED else "failure",
                    resource_type=ctx.resource_type,
                    resource_id=ctx.resource_id,
                    failure_reason=(error or {}).get("message"),
                    operation_id=ctx.id,
                    details={"source": "operation-worker", "attempts": ctx.attempt},
                )
            )
            await uow.commit()
        log.info("operation finished", state=state.value, error=error)
        await self.bus.publish(FINISHED_SUBJECT, {"id": ctx.id, "state": state.value})

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running handlers finish for ``grace`` seconds, then hand the
        rest back as pending so they resume on the next start."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._running.values())
        if tasks:
            grace = self.settings.shutdown_grace_seconds if grace is None else grace
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def crash(self) -> None:
        """Test hook: vanish like a killed process, leaving leases to expire."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._stopping = False
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _dead_local_owner(owner: str, hostname: str) -> bool:
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != hostname or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    return not os.path.exists(f"/proc/{pid}")
