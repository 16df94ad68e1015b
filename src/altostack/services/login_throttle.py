"""Failed-login protection: per user and per source address, with growing lockouts.

Counters live in the database (so every API replica sees them) and are written in their
own transaction: a failed login rolls back everything else, but never its own failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from altostack.db.models import LoginThrottle
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import RateLimited


@dataclass(frozen=True)
class ThrottlePolicy:
    user_max_failures: int = 5
    ip_max_failures: int = 20
    window_seconds: int = 900
    lockout_seconds: int = 60
    max_lockout_seconds: int = 900


def user_key(tenant: str, username: str) -> str:
    return f"user:{tenant}/{username}"[:200]


def ip_key(ip: str | None) -> str:
    return f"ip:{ip or 'unknown'}"


def _lock_message(key: str, until: datetime, now: datetime) -> RateLimited:
    wait = max(1, int((until - now).total_seconds()) + 1)
    who = "this account" if key.startswith("user:") else "this address"
    return RateLimited(
        f"too many failed logins for {who}; try again in {wait} s",
        extra={"retry_after": wait},
        headers={"Retry-After": str(wait)},
    )


async def check(uow: UnitOfWork, keys: list[str]) -> None:
    """Refuse (429) while any of the keys is locked out."""
    now = utcnow()
    for key in keys:
        row = await uow.session.get(LoginThrottle, key)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            raise _lock_message(key, row.locked_until, now)


async def record_failure(uow: UnitOfWork, policy: ThrottlePolicy, keys: list[str]) -> None:
    now = utcnow()
    for key in keys:
        row = await uow.session.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0, window_started_at=now)
            uow.session.add(row)
        if (now - row.window_started_at).total_seconds() > policy.window_seconds:
            row.failures, row.window_started_at = 0, now
        row.failures += 1
        limit = policy.user_max_failures if key.startswith("user:") else policy.ip_max_failures
        over = row.failures - limit
        if over >= 0:
            seconds = min(policy.lockout_seconds * 2**over, policy.max_lockout_seconds)
            row.locked_until = now + timedelta(seconds=seconds)


async def record_success(uow: UnitOfWork, key: str) -> None:
    row = await uow.session.get(LoginThrottle, key)
    if row is not None:
        await uow.session.delete(row)
