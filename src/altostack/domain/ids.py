"""Opaque, typed, time-sortable identifiers (``op-…``, ``tenant-…``).

The body is 9 base32 characters of milliseconds since the epoch followed by 7 random ones,
so sorting by id sorts by creation time: that gives every collection a stable
newest-first order and a one-column pagination cursor for free.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case

PREFIXES = frozenset(
    {
        "op", "evt", "tenant", "user", "tok", "key", "role", "vm", "disk", "img", "vpc",
        "subnet", "sg", "sgr", "eip", "nic", "snap", "host", "region", "cluster", "itype",
        "pg", "natgw", "lb", "pool", "test",
    }
)  # fmt: skip


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A fresh id with the given type prefix."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return f"{prefix}-{_encode(ms, 9)}{_encode(secrets.randbits(35), 7)}"


def prefix_of(ident: str) -> str:
    return ident.split("-", 1)[0]
