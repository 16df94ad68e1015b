"""The database layer's connection shortcuts keep the stock behaviour: SQLite's one-hop
cursor answers rows, rowcount, RETURNING and errors as the stock adapter does, also when
its statements run inline on the event loop's thread (and then only the COMMIT is handed
off, and no statement ever waits for a lock there), and a PostgreSQL connection that died
while idle in the pool is replaced, not handed out."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from altostack.db import database as database_module
from altostack.db.database import Database
from altostack.db.sqlite_driver import OneHopCursor


async def test_sqlite_one_hop_cursor_answers_like_the_stock_one(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
            # executemany, then an UPDATE's rowcount and a RETURNING's rows.
            await conn.execute(
                text("INSERT INTO t (id, v) VALUES (:id, :v)"),
                [{"id": i, "v": f"v{i}"} for i in range(1, 6)],
            )
            updated = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 3"))
            assert updated.rowcount == 2
            returned = await conn.execute(text("UPDATE t SET v = 'x' WHERE id = 1 RETURNING id, v"))
            assert returned.all() == [(1, "x")]
            rows = await conn.execute(text("SELECT id FROM t ORDER BY id"))
            assert rows.keys() == ["id"] and rows.scalars().all() == [1, 2, 3, 4, 5]
            many = await conn.execute(text("SELECT id FROM t ORDER BY id"))
            assert many.fetchmany(2) == [(1,), (2,)] and many.fetchall() == [(3,), (4,), (5,)]
            with pytest.raises(IntegrityError):
                await conn.execute(text("INSERT INTO t (id, v) VALUES (9, 'x')"))
        async with db.engine.connect() as conn:
            cursor = (await conn.get_raw_connection()).dbapi_connection.cursor()
            assert isinstance(cursor, OneHopCursor)
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 5
    finally:
        await db.dispose()


def _count_hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions handed to aiosqlite's thread, in order."""
    handed: list[str] = []
    stock = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Callable[..., Any], *a: Any) -> Any:
        handed.append(getattr(fn, "__name__", repr(fn)))
        return await stock(self, fn, *a)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return handed


async def test_sqlite_inline_statements_answer_alike_and_hand_off_only_the_commit(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
        handed = _count_hand_offs(monkeypatch)
        async with db.uow() as uow, uow.inline_statements():
            conn = await uow.connection()
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 0
            await conn.execute(
                text("INSERT INTO t (id, v) VALUES (:id, :v)"),
                [{"id": i, "v": f"v{i}"} for i in range(1, 6)],
            )
            updated = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 3"))
            assert updated.rowcount == 2
            returned = await conn.execute(text("UPDATE t SET v = 'x' WHERE id = 1 RETURNING id, v"))
            assert returned.all() == [(1, "x")]
            many = await conn.execute(text("SELECT id FROM t ORDER BY id"))
            assert many.fetchmany(2) == [(1,), (2,)] and many.fetchall() == [(3,), (4,), (5,)]
            assert handed == []
            await uow.commit()
        assert handed == ["commit"]
        async with db.uow() as uow, uow.inline_statements():
            conn = await uow.connection()
            await conn.execute(text("DELETE FROM t WHERE id = 5"))
            with pytest.raises(IntegrityError):
                await conn.execute(text("INSERT INTO t (id, v) VALUES (9, 'x')"))
            # Not committed: the DELETE is rolled back with the unit of work.
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM t")) == 5
            assert await conn.scalar(text("SELECT v FROM t WHERE id = 4")) == "v4!"
    finally:
        await db.dispose()


async def test_sqlite_inline_statement_never_waits_for_a_lock_on_the_loop(
    tmp_path: object,
) -> None:
    """Another connection holds the write lock: the inline write gives up at once and
    waits on aiosqlite's thread instead, while the event loop keeps running."""
    path = f"{tmp_path}/t.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t (id, v) VALUES (1, 'other')")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def write() -> tuple[int, int]:
            async with db.uow() as uow, uow.inline_statements():
                conn = await uow.connection()
                # A reader never waits in WAL mode: it sees the last commit.
                before = await conn.scalar(text("SELECT count(*) FROM t"))
                await conn.execute(text("INSERT INTO t (id, v) VALUES (2, 'mine')"))
                # The busy timeout is the connection's own again (0 only while trying).
                busy = await conn.scalar(text("PRAGMA busy_timeout"))
                await uow.commit()
            return before, busy

        tick = asyncio.create_task(ticker())
        writing: Awaitable[tuple[int, int]] = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert ticks >= 10, "the event loop was blocked"
        assert not writing.done()  # type: ignore[attr-defined]
        other.execute("COMMIT")
        before, busy = await asyncio.wait_for(writing, 10)
        tick.cancel()
        assert (before, busy) == (0, 30000)
        assert other.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
            (1, "other"),
            (2, "mine"),
        ]
    finally:
        other.close()
        await db.dispose()


async def test_postgresql_connection_killed_while_idle_is_replaced(
    pg_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    db = Database(pg_server.url())  # type: ignore[attr-defined]
    try:
        async with db.engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        other = create_async_engine(pg_server.url())  # type: ignore[attr-defined]
        async with other.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await other.dispose()
        # The pool holds the dead connection; checkout pings it (idle > 0 s) and
        # replaces it, so the caller never sees the broken one.
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()
