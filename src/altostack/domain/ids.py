"""Opaque, typed, time-sortable identifiers (``op-…``, ``tenant-…``).

The body is 9 base32 characters of milliseconds since the epoch followed by 7 random ones,
so sorting by id sorts by creation time: that gives every collection a stable
newest-first order and a one-column pagination cursor for free.

Within one process the ids are also strictly increasing (as ULID's monotonic mode): in the
same millisecond, or if the clock steps back, the next id continues from the last one
instead of drawing a fresh random tail that could sort before it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case

PREFIXES = frozenset(
    {
        "op", "evt", "tenant", "user", "tok", "key", "role", "vm", "disk", "img", "vpc",
        "subnet", "sg", "sgr", "eip", "nic", "snap", "host", "region", "cluster", "itype",
        "pg", "natgw", "nat", "natr", "lb", "pool", "test",
    }
)  # fmt: skip


# Every pair of characters, indexed by the 10 bits it encodes: a body is 8 lookups
# instead of 16 divisions (a VM create makes two ids per VM).
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_TIME_MASK = (1 << 45) - 1  # the nine time characters


def _body(ms: int, tail: int) -> str:
    """Nine characters of ``ms`` then seven of ``tail`` (35 bits), most significant first."""
    v = ((ms & _TIME_MASK) << _RANDOM_BITS) | tail
    p = _PAIRS
    return (
        p[v >> 70 & 1023]
        + p[v >> 60 & 1023]
        + p[v >> 50 & 1023]
        + p[v >> 40 & 1023]
        + p[v >> 30 & 1023]
        + p[v >> 20 & 1023]
        + p[v >> 10 & 1023]
        + p[v & 1023]
    )


_RANDOM_BITS = 35
_lock = threading.Lock()
_last: tuple[int, int] = (0, 0)  # (milliseconds, random tail) of the last clock-made id


def _reset_after_fork() -> None:
    global _last
    _last = (0, 0)  # a child must not continue its parent's sequence (same ids)


os.register_at_fork(after_in_child=_reset_after_fork)


def _next_clock_parts() -> tuple[int, int]:
    global _last
    ms = time.time_ns() // 1_000_000
    with _lock:
        last_ms, last_tail = _last
        if ms > last_ms:
            # A fresh tail in the lower half leaves room to count up within this ms.
            parts = (ms, secrets.randbits(_RANDOM_BITS - 1))
        elif last_tail + 1 < 1 << _RANDOM_BITS:
            parts = (last_ms, last_tail + 1)
        else:  # 2**34 ids in one millisecond: borrow the next one
            parts = (last_ms + 1, secrets.randbits(_RANDOM_BITS - 1))
        _last = parts
        return parts


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A fresh id with the given type prefix; ``now_ms`` pins the time part (then the
    tail is random and the order within that millisecond is not guaranteed)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    if now_ms is None:
        ms, tail = _next_clock_parts()
    else:
        ms, tail = now_ms, secrets.randbits(_RANDOM_BITS)
    return f"{prefix}-{_body(ms, tail)}"


def prefix_of(ident: str) -> str:
    return ident.split("-", 1)[0]
