"""Housekeeping: forget idempotency records past their TTL and expired sessions.

Idempotency answers are promised for ``idempotency_ttl_seconds`` (24 h by default), not
forever; without this loop the table would grow with every POST.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from altostack.db.database import Database
from altostack.db.types import utcnow

log = structlog.get_logger(__name__)


class Janitor:
    def __init__(self, db: Database, interval_seconds: float = 300.0) -> None:
        self.db = db
        self.interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, int]:
        now = utcnow()
        async with self.db.uow() as uow:
            keys = await uow.idempotency.purge_expired(now)
            tokens = await uow.tokens.purge_expired(now)
            await uow.commit()
        if keys or tokens:
            log.info("purged expired records", idempotency_keys=keys, tokens=tokens)
        return {"idempotency_keys": keys, "tokens": tokens}

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("janitor pass failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
