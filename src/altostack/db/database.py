"""The engine, its dialect quirks, and the unit of work factory.

SQLite is the embedded default: one process owns the file, so writers are serialised by an
asyncio lock in that process (SQLite would otherwise answer SQLITE_BUSY to a second writer
upgrading a read transaction). PostgreSQL needs no such lock: row locks and unique
constraints do the job across many API replicas.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from altostack.db.sqlite_driver import one_hop_dbapi
from altostack.db.uow import UnitOfWork

# A pooled PostgreSQL connection idle for longer than this is pinged before use.
PING_AFTER_IDLE_SECONDS = 10.0


class PointReader:
    """Primary-key reads on SQLite without the async machinery.

    A read through aiosqlite and the ORM costs ~1-2 ms of round trips to aiosqlite's
    thread; the same read on a plain sqlite3 connection on the event loop thread costs
    ~20 µs and cannot block for long (WAL: readers never wait for the writer). Used for the
    hot polling path (``GET /v1/operations/{id}``); everything else stays on the ORM.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None

    def values(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row as a plain tuple (no row factory: ~4 µs less per read)."""
        if self._cursor is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA query_only=ON")
            self._cursor = self._conn.cursor()  # reused: one object less per read
        found: tuple[Any, ...] | None = self._cursor.execute(sql, params).fetchone()
        return found

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._cursor = None


class Database:
    """One per process: owns the connection pool."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.dialect_driver = parsed.get_driver_name()
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_dumps}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread: statements in ``InlineStatements`` blocks run on the
            # event loop's thread, the others on aiosqlite's (one at a time either way).
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            if self.dialect_driver == "aiosqlite":
                kwargs["module"] = one_hop_dbapi()
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_timeout=30)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if not self.is_sqlite:
            _ping_after_idle(self.engine, PING_AFTER_IDLE_SECONDS)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self.point_reader: PointReader | None = None
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self.point_reader = PointReader(parsed.database)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def uow(self, *, write: bool = True) -> UnitOfWork:
        """A unit of work; ``write=False`` skips the SQLite writer lock for pure reads."""
        return UnitOfWork(self.sessionmaker, self._write_lock if write else None)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.point_reader is not None:
            self.point_reader.close()
        await self.engine.dispose()


def _json_dumps(value: Any) -> str:
    """``json.dumps``, but the values most JSON columns hold (an empty list or object, a
    null) are answered without the encoder: a VM and its operation carry seven."""
    if not value:
        if value is None:
            return "null"
        if type(value) is dict:
            return "{}"
        if type(value) is list:
            return "[]"
    return json.dumps(value)


def _ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Check a pooled connection at checkout only when it sat idle for ``idle_seconds``.

    ``pool_pre_ping`` pings at every checkout, and asyncpg's ping is three round trips
    (BEGIN, an empty query, ROLLBACK): a tenth of a VM create's statements. Connections
    go stale while they sit idle (a server restart, an idle timeout on the way), so a
    connection checked in a moment ago is used as is; one idle for longer is pinged, and
    a dead one is replaced (``DisconnectionError``: the pool retries with a new one), as
    with ``pool_pre_ping``."""
    sync_engine = engine.sync_engine

    def mark(_dbapi: Any, record: Any, *_: Any) -> None:
        record.info["alto_idle_since"] = time.monotonic()

    def check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("alto_idle_since")
        if since is not None and time.monotonic() - since <= idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError("connection lost while idle in the pool") from exc

    event.listen(sync_engine, "connect", mark)
    event.listen(sync_engine, "checkin", mark)
    event.listen(sync_engine, "checkout", check)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
