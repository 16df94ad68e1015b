"""The janitor forgets idempotency answers past their TTL and expired sessions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from altostack.db.models import AuthToken, IdempotencyKey
from altostack.db.types import utcnow


async def test_purges_expired_keys_and_tokens(container, client, admin):
    await client.post(
        "/v1/roles",
        json={"name": "r1", "permissions": ["vm:read"]},
        headers={**admin, "Idempotency-Key": "k1"},
    )
    async with container.db.uow() as uow:
        assert await uow.session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
        row = (await uow.session.scalars(select(AuthToken))).first()
        row.expires_at = utcnow() - timedelta(seconds=1)
        key = (await uow.session.scalars(select(IdempotencyKey))).first()
        key.expires_at = utcnow() - timedelta(seconds=1)
        await uow.commit()
    assert await container.janitor.run_once() == {"idempotency_keys": 1, "tokens": 1}
    assert await container.janitor.run_once() == {"idempotency_keys": 0, "tokens": 0}
