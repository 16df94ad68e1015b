"""When the SDK tries a request again, and how long it waits first.

Only failures where the request may not have been processed, or the server says it is
temporarily unable, are retried: a connection that failed or dropped, and 503. Retrying a
POST is safe because every POST carries an ``Idempotency-Key`` that stays the same across
the retries, so the server replays the first answer instead of acting twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({503})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` counts the first try; delays double from ``backoff`` up to
    ``max_backoff``, with jitter so that many clients do not retry in lockstep."""

    attempts: int = 3
    backoff: float = 0.25
    max_backoff: float = 4.0

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base * (0.5 + random.random() / 2)

    def after_error(self, attempt: int, exc: httpx.TransportError) -> float | None:
        """Seconds to wait before try ``attempt + 1`` after ``exc``, or None to give up."""
        if attempt + 1 >= self.attempts:
            return None
        if isinstance(exc, httpx.NetworkError | httpx.TimeoutException | httpx.RemoteProtocolError):
            return self._delay(attempt)
        return None

    def after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before trying again after this answer, or None to keep it."""
        if response.status_code not in RETRY_STATUSES or attempt + 1 >= self.attempts:
            return None
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass
        return self._delay(attempt)


NO_RETRY = RetryPolicy(attempts=1)
