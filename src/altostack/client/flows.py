"""The I/O-free halves of pagination and operation waiting.

The sync and the async client differ only in how they send a request and sleep; the
decisions (which cursor next, how long to long-poll, when to stop, when to report
progress) live here once, as small state machines both clients drive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

MAX_PAGE_SIZE = 500
MAX_SERVER_WAIT = 60.0
FINISHED = frozenset({"succeeded", "failed"})

Params = list[tuple[str, str | int | float | bool | None]]
ProgressCallback = Callable[[dict[str, Any]], None]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def query_params(filters: Mapping[str, Any] | None) -> Params:
    """Filters as query pairs: None is left out, lists repeat the key, datetimes and
    booleans take the forms the API parses."""
    pairs: Params = []
    for key, value in (filters or {}).items():
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            pairs.extend((key, _text(v)) for v in value)
        else:
            pairs.append((key, _text(value)))
    return pairs


class Pager:
    """Walks ``{"items": […], "next_cursor": …}`` pages, stopping at ``max_items``."""

    def __init__(self, filters: Mapping[str, Any], page_size: int, max_items: int | None) -> None:
        self.filters = query_params(filters)
        self.page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        if max_items is not None:
            self.page_size = max(1, min(self.page_size, max_items))
        self.remaining = max_items
        self.cursor: str | None = None
        self.done = max_items is not None and max_items <= 0

    def params(self) -> Params:
        pairs = [*self.filters, ("limit", str(self.page_size))]
        if self.cursor:
            pairs.append(("cursor", self.cursor))
        return pairs

    def feed(self, page: Any) -> list[dict[str, Any]]:
        """The items of ``page`` to hand out; updates the cursor and ``done``."""
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise ValueError("not a collection page: expected {'items': [...], 'next_cursor'}")
        items: list[dict[str, Any]] = page["items"]
        if self.remaining is not None:
            items = items[: self.remaining]
            self.remaining -= len(items)
        cursor = page.get("next_cursor")
        self.cursor = cursor if isinstance(cursor, str) and cursor else None
        self.done = self.cursor is None or self.remaining == 0 or not page["items"]
        return items


class OperationWait:
    """Long-polls ``GET /v1/operations/{id}?wait=N`` until the end or the timeout.

    With a progress callback each poll is short (``progress_poll`` seconds) so the caller
    sees progress move; the server only wakes a long-poll when the operation *ends*, so
    a long poll would freeze a progress bar. Without one, polls are long and few.
    """

    def __init__(
        self,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        *,
        progress_poll: float = 1.0,
        quiet_poll: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.on_progress = on_progress
        self.poll = min(progress_poll if on_progress else quiet_poll, MAX_SERVER_WAIT)
        self.clock = clock
        self.deadline = None if timeout is None else clock() + max(timeout, 0.0)
        self.last: dict[str, Any] | None = None
        self._seen: tuple[Any, Any] | None = None

    def next_wait(self) -> float:
        """Seconds to ask the server to hold the next poll (0 = answer at once)."""
        if self.deadline is None:
            return self.poll
        return max(0.0, min(self.poll, self.deadline - self.clock()))

    def feed(self, operation: dict[str, Any]) -> bool:
        """Record one poll's answer; True when the operation has ended."""
        self.last = operation
        seen = (operation.get("state"), operation.get("progress"))
        if self.on_progress is not None and seen != self._seen:
            self.on_progress(operation)
        self._seen = seen
        return operation.get("state") in FINISHED

    def expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline
