"""SQLAlchemy's aiosqlite adapter with one thread hand-off per statement instead of four.

aiosqlite runs every call on its own thread, and SQLAlchemy's adapter makes four calls
per statement (open a cursor, execute, fetch the rows, close the cursor): four queue
hand-offs and four wake-ups of the event loop, each costing more CPU on this kind of
machine than SQLite's own work on a small statement. Here the whole statement (cursor,
execute, fetch, close) is one function run on aiosqlite's thread, as aiosqlite's own
``execute_fetchall`` does; the rows, description, rowcount and lastrowid come back
together. Everything else (connections, transactions, errors, isolation levels) is the
stock adapter's. Server-side cursors keep the stock behaviour.

Used through ``create_async_engine(..., module=one_hop_dbapi())``: the URL, the dialect
and its SQL are unchanged.

A block of small statements can also run *inline*, on the calling (event loop) thread,
with no hand-off at all (``InlineStatements``): on this kind of machine a hand-off costs
more than SQLite's work on a point statement, and on a busy one it waits for aiosqlite's
thread to be scheduled (at a load of 3-4, a VM create with all its statements and its
COMMIT inline took 35-40 % less wall time; the COMMIT stays a hand-off, below). Inline, a
statement must never wait, since the loop would wait with it:

* it never waits for another connection's lock: unless its transaction already holds the
  write lock (it has written; then nothing can wait), a statement runs with SQLite's busy
  timeout at 0; when SQLite answers "busy" (another process's writer), a transaction the
  statement began is rolled back (it held nothing yet), a statement inside one had no
  effect anyway, and the statement goes through aiosqlite's thread, which waits as usual;
* COMMIT (and ROLLBACK) still go through aiosqlite's thread: a commit may run a WAL
  checkpoint, which writes and syncs the database file.

What is left on the loop is SQLite's own work on the pages the statement touches, as
for ``PointReader``. It needs connections opened with ``check_same_thread=False``
(``Database`` does); a statement runs inline only while no hand-off of the same connection
is in flight.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any] | None, int, int | None]


class _Busy(Exception):
    """An inline statement met another connection's lock (and gave up at once)."""


async def _nothing() -> None:
    """Awaited by an inline statement: SQLAlchemy insists that a statement awaits
    something, and a coroutine that returns at once is a greenlet switch, no turn of the
    event loop."""


def _run_without_waiting(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool, busy_ms: int
) -> _Outcome:
    """``_run`` with SQLite's busy timeout at 0 meanwhile. "Busy" (another connection
    holds the write lock) raises ``_Busy``, leaving things as they were before: a failed
    statement has no effect, and a transaction it began is rolled back (it held no lock
    yet, so that does not wait either)."""
    began = not conn.in_transaction
    conn.execute("PRAGMA busy_timeout=0")
    try:
        return _run(conn, operation, parameters, many)
    except sqlite3.OperationalError as error:
        if getattr(error, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        if began and conn.in_transaction:
            conn.rollback()
        raise _Busy() from error
    finally:
        conn.execute(f"PRAGMA busy_timeout={busy_ms}")


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _takes_write_lock(operation: str) -> bool:
    """A statement that, once it succeeded, leaves its transaction holding SQLite's write
    lock (every INSERT, UPDATE, DELETE takes it when it starts, whatever rows it touches)."""
    return operation.lstrip()[:7].upper().startswith(_WRITES)


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """One statement start to end (on aiosqlite's thread, or inline)."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement costs one hand-off to aiosqlite's thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No driver cursor is opened here (the stock adapter spends a hand-off on it).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        """Nothing to close: the driver cursor was closed on aiosqlite's thread."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            if self._adapt()._inline and self._inline(operation, parameters, False):
                return None
            return await_(self._one_hop(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            if self._adapt()._inline and self._inline(operation, seq_of_parameters, True):
                return None
            return await_(self._one_hop(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def _adapt(self) -> OneHopConnection:
        return cast(OneHopConnection, self._adapt_connection)

    def _inline(self, operation: Any, parameters: Any, many: bool) -> bool:
        """Run the statement on this thread (see the module's docstring); False when it
        must go through aiosqlite's thread after all."""
        adapt = self._adapt()
        conn: sqlite3.Connection | None = self._connection._connection
        if conn is None or adapt._execute_mutex.locked():
            return False
        was_in_transaction = conn.in_transaction
        if adapt._writing and was_in_transaction:
            # This transaction holds the write lock: nothing to wait for.
            outcome = _run(conn, operation, parameters, many)
        else:
            if adapt._busy_ms is None:
                adapt._busy_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
            try:
                outcome = _run_without_waiting(conn, operation, parameters, many, adapt._busy_ms)
            except _Busy:
                return False
        adapt._note_lock(operation, was_in_transaction)
        self._description, rows, self._rowcount, self._lastrowid = outcome
        if rows is not None:
            self._rows = collections.deque(rows)
        await_(_nothing())
        return True

    async def _one_hop(self, operation: Any, parameters: Any, many: bool) -> None:
        adapt = self._adapt()
        async with adapt._execute_mutex:
            connection = self._connection
            was_in_transaction = connection._conn.in_transaction
            outcome: _Outcome = await connection._execute(
                _run, connection._conn, operation, parameters, many
            )
            adapt._note_lock(operation, was_in_transaction)
        self._description, rows, self._rowcount, self._lastrowid = outcome
        if rows is not None:
            self._rows = collections.deque(rows)

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has one result set per statement")

    def setinputsizes(self, *inputsizes: Any) -> None:
        """Not used by SQLite."""


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_busy_ms", "_inline", "_writing")
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._inline = False  # statements run on the calling thread (InlineStatements)
        self._writing = False  # the transaction holds the write lock (``_note_lock``)
        self._busy_ms: int | None = None  # the connection's busy timeout

    def _note_lock(self, operation: str, was_in_transaction: bool) -> None:
        """Whether the transaction now holds SQLite's write lock, after ``operation``
        succeeded: a write takes it, the end of the transaction gives it up, and a
        statement that began the transaction without writing (a SAVEPOINT) does not."""
        driver = self._connection._connection
        if driver is None or not driver.in_transaction:
            self._writing = False
        elif _takes_write_lock(operation):
            self._writing = True
        elif not was_in_transaction:
            self._writing = False

    def commit(self) -> None:
        self._writing = False
        super().commit()

    def rollback(self) -> None:
        """A rollback outside a transaction does nothing, and the pool's reset after every
        commit is one: skip its hand-off (``in_transaction`` is SQLite's own flag)."""
        self._writing = False
        driver = self._connection._connection
        if driver is not None and not driver.in_transaction:
            return
        super().rollback()


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        stock = super().connect(*arg, **kw)
        return OneHopConnection(self, stock._connection)


def one_hop_dbapi() -> OneHopDBAPI:
    return OneHopDBAPI(aiosqlite, sqlite3)


class InlineStatements:
    """An async context manager: inside the block, the statements of the connection that
    ``connect`` answers (on SQLite with this adapter) run on the calling thread, never
    waiting for a lock (see the module's docstring); for a block of small statements, such
    as a VM create's. Elsewhere (PostgreSQL, the stock adapter) they run as usual. A plain
    class: a generator-based context manager costs more than the statements it saves on."""

    __slots__ = ("_connect", "_driver")

    def __init__(self, connect: Callable[[], Awaitable[AsyncConnection]]) -> None:
        self._connect = connect
        self._driver: OneHopConnection | None = None

    async def __aenter__(self) -> None:
        sync = (await self._connect()).sync_connection
        driver = sync.connection.dbapi_connection if sync is not None else None
        if isinstance(driver, OneHopConnection):
            driver._inline = True
            self._driver = driver

    async def __aexit__(self, *exc_info: object) -> None:
        if self._driver is not None:
            self._driver._inline = False
            self._driver = None
