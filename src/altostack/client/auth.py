"""httpx authentication flows: a bearer token, or an API key signing every request.

Being ``httpx.Auth`` flows, they run at send time for the sync and the async client alike,
so each retry is signed afresh with a new timestamp over the exact bytes on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import httpx

from altostack.client import signing


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


class ApiKeyAuth(httpx.Auth):
    """ALTO1-HMAC-SHA256 over the method, the raw path, the query and the body."""

    requires_request_body = True

    def __init__(
        self, access_key_id: str, secret: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.access_key_id = access_key_id
        self._secret = secret
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = signing.authorization_header(
            self.access_key_id,
            self._secret,
            timestamp=int(self._clock()),
            method=request.method,
            path=request.url.raw_path.split(b"?", 1)[0].decode("ascii"),
            query=request.url.query,
            body=request.content,
        )
        yield request
