"""Unit of work: one transaction, rolled back unless committed (cosmicpython style).

A request that mutates runs inside one top-level unit of work opened by the API layer, so
the spec change, its operation, its idempotency record and its audit event commit
together. Services simply ask the database for a unit of work; inside an active one they
*join* it (their ``commit`` is left to the owner), which also keeps SQLite's single
writer lock from being taken twice.

Post-commit hooks carry side effects that must only happen once the data is durable,
such as waking the operation worker over the bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from altostack.db.repositories import (
    ApiKeyRepository,
    EventRepository,
    IdempotencyRepository,
    OperationRepository,
    TenantRepository,
    TokenRepository,
    UserRepository,
)
from altostack.db.sqlite_driver import InlineStatements

AfterCommit = Callable[[], Awaitable[None]]

_current: ContextVar[UnitOfWork | None] = ContextVar("altostack_uow", default=None)


class UnitOfWork:
    session: AsyncSession

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], lock: asyncio.Lock | None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._lock = lock
        self._after_commit: list[AfterCommit] = []
        self._committed = False
        self._outer: UnitOfWork | None = None
        self._connection: AsyncConnection | None = None
        self.active = False

    async def __aenter__(self) -> Self:
        outer = _current.get()
        if outer is not None and outer.active:
            self._outer = outer
            self._bind(outer.session)
            return self
        if self._lock is not None:
            await self._lock.acquire()
        try:
            self._bind(self._sessionmaker())
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self.active = True
        self._token = _current.set(self)
        return self

    def _bind(self, session: AsyncSession) -> None:
        self.session = session
        self.tenants = TenantRepository(session)
        self.users = UserRepository(session)
        self.tokens = TokenRepository(session)
        self.operations = OperationRepository(session)
        self.events = EventRepository(session)
        self.idempotency = IdempotencyRepository(session)
        self.api_keys = ApiKeyRepository(session)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._outer is not None:
            return
        self.active = False
        _current.reset(self._token)
        try:
            # close() rolls back whatever was not committed and detaches the objects
            # without expiring them, so results read here stay usable afterwards.
            await self.session.close()
        finally:
            if self._lock is not None:
                self._lock.release()
        if self._committed and exc_type is None:
            for hook in self._after_commit:
                await hook()

    async def connection(self) -> AsyncConnection:
        """The transaction's connection, for Core statements. Asking the session costs a
        greenlet hand-off and its transaction bookkeeping each time (a VM create asks
        five times), so it is looked up once per transaction."""
        if self._outer is not None:
            return await self._outer.connection()
        if self._connection is None:
            self._connection = await self.session.connection()
        return self._connection

    def inline_statements(self) -> InlineStatements:
        """``async with`` it: inside the block, this transaction's statements run on the
        calling thread on SQLite (``db.sqlite_driver.InlineStatements``); as usual
        elsewhere."""
        return InlineStatements(self.connection)

    @property
    def joined(self) -> bool:
        return self._outer is not None

    async def commit(self) -> None:
        """Commit; inside a joined unit of work the owner commits, so this only flushes."""
        if self._outer is not None:
            await self.session.flush()
            return
        self._connection = None
        await self.session.commit()
        self._committed = True

    async def rollback(self) -> None:
        self._connection = None
        await self.session.rollback()

    async def flush(self) -> None:
        await self.session.flush()

    def after_commit(self, hook: AfterCommit) -> None:
        """Run ``hook`` once the outermost transaction has committed."""
        if self._outer is not None:
            self._outer.after_commit(hook)
        else:
            self._after_commit.append(hook)
