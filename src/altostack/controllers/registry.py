"""Operation kinds and their handlers.

A handler is an async function of an :class:`OperationContext`. It must be idempotent:
after a crash it runs again from the last checkpoint it saved, so each step either checks
whether it was already done or is safe to repeat. It raises ``TemporaryError`` when a retry
may help and ``PermanentError`` when it cannot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from altostack.controllers.worker import OperationWorker


class LeaseLost(Exception):
    """Another worker took the operation over; stop without writing anything."""


@dataclass
class OperationContext:
    id: str
    kind: str
    tenant_id: str
    resource_type: str | None
    resource_id: str | None
    input: dict[str, Any]
    checkpoint: dict[str, Any]
    attempt: int
    worker: OperationWorker = field(repr=False)

    async def progress(self, percent: int, checkpoint: dict[str, Any] | None = None) -> None:
        """Persist progress (0-100) and, optionally, where to resume after a crash."""
        if checkpoint is not None:
            self.checkpoint = {**self.checkpoint, **checkpoint}
        await self.worker.save_progress(self, max(0, min(100, percent)))


Handler = Callable[[OperationContext], Awaitable[dict[str, Any] | None]]


class OperationRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        if kind in self._handlers and self._handlers[kind] is not handler:
            raise ValueError(f"operation kind {kind!r} is already registered")
        self._handlers[kind] = handler

    def kind(self, name: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.register(name, handler)
            return handler

        return decorate

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)
