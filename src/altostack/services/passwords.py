"""Password hashing with argon2id; cost is configurable so tests stay fast."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from altostack.domain.errors import InvalidRequest

MIN_LENGTH = 8
MAX_LENGTH = 128


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # A real hash to verify against when the user does not exist, so that a missing
        # user costs the same time as a wrong password (no username probing by timing).
        self.dummy_hash = self._hasher.hash("altostack-timing-equaliser")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def _verify() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(_verify)


def check_strength(password: str, field: str = "password") -> None:
    """Reject weak passwords with a message that says what is needed."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidRequest.for_field(
            field, f"must be {MIN_LENGTH}-{MAX_LENGTH} characters long (got {len(password)})"
        )
    classes = sum(
        [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ]
    )
    if classes < 2:
        raise InvalidRequest.for_field(
            field, "must mix at least two of: lower case, upper case, digits, symbols"
        )
