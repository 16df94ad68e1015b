"""The database layer's connection shortcuts keep the stock behaviour: SQLite's one-hop
cursor answers rows, rowcount, RETURNING and errors as the stock adapter does, and a
PostgreSQL connection that died while idle in the pool is replaced, not handed out."""

from __future__ import annotations

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
