"""The bus interface every implementation honours."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    subject: str
    data: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Message], Awaitable[dict[str, Any] | None]]


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def unsubscribe(self) -> None: ...


class Bus(abc.ABC):
    """Contract: ``publish`` never blocks on slow subscribers; a failing handler never
    breaks the publisher; ``request`` raises ``TimeoutError`` when nobody answers in time
    (a dead agent becomes a visible failure, not a hang)."""

    @abc.abstractmethod
    async def publish(
        self, subject: str, data: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None: ...

    @abc.abstractmethod
    async def subscribe(
        self, pattern: str, handler: Handler, *, queue: str | None = None
    ) -> Subscription:
        """``queue`` groups share the work: each message goes to one member of the group."""

    @abc.abstractmethod
    async def request(
        self, subject: str, data: dict[str, Any], *, timeout: float
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard semantics: ``*`` matches one token, ``>`` one or more trailing tokens."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, token in enumerate(p_tokens):
        if token == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if token != "*" and token != s_tokens[i]:
            return False
    return len(p_tokens) == len(s_tokens)


def connect(url: str) -> Bus:
    """Build the bus named by a URL."""
    if url.startswith("memory://"):
        from altostack.bus.memory import MemoryBus

        return MemoryBus()
    if url.startswith(("nats://", "tls://")):
        from altostack.bus.nats import NatsBus

        return NatsBus(url)
    raise ValueError(f"unsupported bus URL {url!r}: use memory:// or nats://host:port")
