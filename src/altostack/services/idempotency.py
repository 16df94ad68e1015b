"""Stored answers for POSTs that carry an ``Idempotency-Key``.

The record is inserted at the start of the request's own transaction and completed at
its end, so it commits exactly when the change it describes commits. A concurrent twin
request blocks on the key (PostgreSQL: the unique index; SQLite: the writer lock) and,
once the first commits, replays its answer: 50 racing retries create one resource.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from altostack.db.models import IdempotencyKey
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, InvalidRequest

MAX_KEY_LENGTH = 255
IN_PROGRESS = 0


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes
    headers: dict[str, str]


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(part)
        digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest.for_field(
            "Idempotency-Key", f"must be 1-{MAX_KEY_LENGTH} printable characters"
        )


class IdempotencyService:
    def __init__(self, ttl_seconds: int) -> None:
        self.ttl = timedelta(seconds=ttl_seconds)

    async def find(
        self, uow: UnitOfWork, scope: str, key: str, fingerprint: str
    ) -> StoredResponse | None:
        """The stored answer for this key, or None; 409 when the key was used for another
        request."""
        row = await uow.idempotency.get(scope, key)
        if row is None or row.status_code == IN_PROGRESS:
            return None
        if row.expires_at <= utcnow():
            await uow.session.delete(row)
            await uow.flush()
            return None
        if row.request_hash != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request; "
                "use a new key for a new request"
            )
        return StoredResponse(row.status_code, row.response_body.encode(), row.response_headers)

    async def reserve(self, uow: UnitOfWork, scope: str, key: str, fingerprint: str) -> None:
        """Claim the key inside the current transaction (raises IntegrityError on a race)."""
        now = utcnow()
        uow.idempotency.add(
            IdempotencyKey(
                scope=scope,
                key=key,
                request_hash=fingerprint,
                status_code=IN_PROGRESS,
                response_body="",
                response_headers={},
                created_at=now,
                expires_at=now + self.ttl,
            )
        )
        await uow.flush()

    async def complete(
        self, uow: UnitOfWork, scope: str, key: str, response: StoredResponse
    ) -> None:
        row = await uow.idempotency.get(scope, key)
        if row is None:
            return
        row.status_code = response.status_code
        row.response_body = response.body.decode()
        row.response_headers = response.headers

    async def purge(self, uow: UnitOfWork) -> int:
        return await uow.idempotency.purge_expired(utcnow())
