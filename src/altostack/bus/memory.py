"""In-process bus for the all-in-one: asyncio tasks, no network, same contract as NATS."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import structlog

from altostack.bus.base import Bus, Handler, Message, Subscription, subject_matches

log = structlog.get_logger(__name__)


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, pattern: str, handler: Handler, queue: str | None):
        self.bus = bus
        self.pattern = pattern
        self.handler = handler
        self.queue = queue

    async def unsubscribe(self) -> None:
        if self in self.bus._subs:
            self.bus._subs.remove(self)


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._subs: list[_MemorySubscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # One round-robin counter per queue group: a shared one would hand a group the
        # same member every time whenever the number of groups divides its size.
        self._rr: dict[str, itertools.count[int]] = {}
        self._closed = False

    def _targets(self, subject: str) -> list[_MemorySubscription]:
        matched = [s for s in self._subs if subject_matches(s.pattern, subject)]
        plain = [s for s in matched if s.queue is None]
        groups: dict[str, list[_MemorySubscription]] = {}
        for sub in matched:
            if sub.queue is not None:
                groups.setdefault(sub.queue, []).append(sub)
        for queue, members in groups.items():
            turn = next(self._rr.setdefault(queue, itertools.count()))
            plain.append(members[turn % len(members)])
        return plain

    async def publish(
        self, subject: str, data: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        if self._closed:
            return
        message = Message(subject, data, headers or {})
        for sub in self._targets(subject):
            task = asyncio.create_task(self._deliver(sub, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, sub: _MemorySubscription, message: Message) -> None:
        try:
            await sub.handler(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bus handler failed", subject=message.subject, pattern=sub.pattern)

    async def subscribe(
        self, pattern: str, handler: Handler, *, queue: str | None = None
    ) -> Subscription:
        sub = _MemorySubscription(self, pattern, handler, queue)
        self._subs.append(sub)
        return sub

    async def request(
        self, subject: str, data: dict[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        targets = self._targets(subject)
        if not targets:
            # Like NATS' "no responders": nobody listens, so waiting cannot help.
            raise TimeoutError(f"no responder for {subject!r}")
        reply = await asyncio.wait_for(targets[0].handler(Message(subject, data)), timeout)
        return reply or {}

    async def ping(self) -> None:
        if self._closed:
            raise ConnectionError("bus is closed")

    async def close(self) -> None:
        self._closed = True
        self._subs.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
