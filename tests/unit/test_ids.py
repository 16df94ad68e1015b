"""Typed, time-sortable ids: the order of creation is the order of the ids."""

from __future__ import annotations

import re
import threading
import time

import pytest

from altostack.domain import ids
from altostack.domain.ids import PREFIXES, new_id, prefix_of

BODY = re.compile(r"^[0-9a-hjkmnp-tv-z]{16}$")  # Crockford base32, lower case


def test_shape_and_prefix():
    for prefix in sorted(PREFIXES):
        ident = new_id(prefix)
        assert prefix_of(ident) == prefix
        head, body = ident.split("-", 1)
        assert head == prefix
        assert BODY.match(body), ident
    assert len(new_id("op")) == len("op-") + 16


def test_unknown_prefix_is_refused():
    with pytest.raises(ValueError, match="unknown id prefix"):
        new_id("nope")


def test_ids_sort_by_time():
    assert new_id("op", now_ms=1_000) < new_id("op", now_ms=1_001)
    assert new_id("op", now_ms=1_700_000_000_000) < new_id("op", now_ms=1_700_000_000_001)
    # Far future (year 3000) still fits the nine time characters and sorts.
    assert new_id("op", now_ms=1_700_000_000_000) < new_id("op", now_ms=32_503_680_000_000)


def fake_clock(monkeypatch: pytest.MonkeyPatch, ms: int) -> list[int]:
    """Pin the clock (and forget the real-clock sequence; monkeypatch restores it)."""
    now = [ms]
    monkeypatch.setattr(ids, "_last", (0, 0))
    monkeypatch.setattr(time, "time_ns", lambda: now[0] * 1_000_000)
    return now


def test_ids_made_in_the_same_millisecond_keep_their_order(monkeypatch: pytest.MonkeyPatch):
    fake_clock(monkeypatch, 1_750_000_000_000)
    made = [new_id("op") for _ in range(1_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {i[3:12] for i in made} == {new_id("op", now_ms=1_750_000_000_000)[3:12]}


def test_a_burst_of_ids_is_strictly_increasing():
    burst = [new_id("evt") for _ in range(5_000)]
    assert burst == sorted(burst)
    assert len(set(burst)) == len(burst)


def test_ids_are_unique_and_ordered_across_threads():
    found: list[list[str]] = []

    def make() -> None:
        found.append([new_id("vm") for _ in range(2_000)])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in found for i in chunk]
    assert len(set(every)) == len(every) == 8_000
    for chunk in found:
        assert chunk == sorted(chunk)


def test_a_clock_that_steps_back_does_not_break_the_order(monkeypatch: pytest.MonkeyPatch):
    now = fake_clock(monkeypatch, 1_760_000_000_000)
    before = new_id("op")
    now[0] -= 5_000  # NTP stepped the clock back five seconds
    after = new_id("op")
    assert after > before
    now[0] += 10_000
    assert new_id("op")[3:12] == new_id("op", now_ms=now[0])[3:12]
