"""The asynchronous twin of :class:`altostack.client.Client` (same behaviour, awaitable)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import httpx

from altostack.client.base import BaseClient, QueryArg, path_of
from altostack.client.credentials import Credentials
from altostack.client.errors import OperationFailed, TransportFailure, WaitTimeout
from altostack.client.flows import OperationWait, Pager, ProgressCallback
from altostack.client.retry import RetryPolicy


class AsyncClient(BaseClient):
    """Talks to one Altostack API with one identity, from asyncio code.

    Every method mirrors :class:`altostack.client.Client`; see there.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        tenant: str | None = None,
        profile: str | None = None,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            url,
            token=token,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            tenant=tenant,
            profile=profile,
            credentials=credentials,
            timeout=timeout,
            retry=retry,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, transport=transport, verify=verify, timeout=timeout
        )
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- raw exchange ---------------------------------------------------------------

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: QueryArg = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        authenticate: bool = True,
    ) -> httpx.Response:
        """One call, retried per the policy; the answer whatever its status."""
        method = method.upper()
        request = self._http.build_request(
            method,
            path,
            params=self._params(params),
            json=json,
            headers=self._headers(method, idempotency_key, headers),
            timeout=self._request_timeout(timeout),
        )
        auth = self._auth if authenticate else None
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, auth=auth)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(attempt, exc)
                if delay is None:
                    raise TransportFailure(
                        f"{method} {self.base_url}{path}: {exc or type(exc).__name__}",
                        attempts=attempt + 1,
                    ) from exc
            else:
                delay = self.retry.after_response(attempt, response)
                if delay is None:
                    return response
                await response.aclose()
            attempt += 1
            await self._sleep(delay)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON of a successful call; a typed ``ApiError`` otherwise."""
        return self.decode(await self.send(method, path, **kwargs))

    async def get(self, path: str, params: QueryArg = None, **kwargs: Any) -> Any:
        return await self.request("GET", path, params=params, **kwargs)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return await self.request("POST", path, json=json, **kwargs)

    async def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return await self.request("PUT", path, json=json, **kwargs)

    async def patch(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return await self.request("PATCH", path, json=json, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Any:
        return await self.request("DELETE", path, **kwargs)

    # -- raw bodies (image files) ---------------------------------------------------

    async def send_content(
        self,
        method: str,
        path: str,
        content: bytes | AsyncIterable[bytes],
        *,
        params: QueryArg = None,
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send a raw body once (a streamed body cannot be replayed); see ``Client``."""
        method = method.upper()
        extra = {"Content-Type": content_type, **(headers or {})}
        request = self._http.build_request(
            method,
            path,
            params=self._params(params),
            content=content,
            headers=self._headers(method, None, extra),
            timeout=self._request_timeout(timeout),
        )
        try:
            return await self._http.send(request, auth=self._auth)
        except httpx.TransportError as exc:
            raise TransportFailure(
                f"{method} {self.base_url}{path}: {exc or type(exc).__name__}", attempts=1
            ) from exc

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: QueryArg = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A successful answer read as it arrives (``aiter_bytes()``); see ``Client``."""
        method = method.upper()
        request = self._http.build_request(
            method,
            path,
            params=self._params(params),
            headers=self._headers(method, None, headers),
            timeout=self._request_timeout(timeout),
        )
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, auth=self._auth, stream=True)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(attempt, exc)
                if delay is None:
                    raise TransportFailure(
                        f"{method} {self.base_url}{path}: {exc or type(exc).__name__}",
                        attempts=attempt + 1,
                    ) from exc
            else:
                delay = self.retry.after_response(attempt, response)
                if delay is None:
                    break
                await response.aclose()
            attempt += 1
            await self._sleep(delay)
        try:
            if response.status_code >= 400:
                await response.aread()
                self.decode(response)  # raises the typed error
            yield response
        finally:
            await response.aclose()

    # -- collections ----------------------------------------------------------------

    async def list_all(
        self, path: str, *, page_size: int = 100, max_items: int | None = None, **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a collection, fetching pages lazily by ``next_cursor``."""
        pager = Pager(filters, page_size, max_items)
        while not pager.done:
            for item in pager.feed(await self.get(path, pager.params())):
                yield item

    def operations(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        return self.list_all("/v1/operations", **filters)

    def events(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        """The audit log, newest first (``since``, ``until``, ``resource_id``, ``actor``,
        ``action``, ``result``, ``tenant_id``)."""
        return self.list_all("/v1/events", **filters)

    # -- sessions -------------------------------------------------------------------

    async def login(self, tenant: str | None, username: str, password: str) -> dict[str, Any]:
        """Get a bearer token and use it from now on; returns ``{"token", "expires_at",
        "user"}``."""
        body = {
            "tenant": tenant or self.credentials.tenant or "system",
            "username": username,
            "password": password,
        }
        issued: dict[str, Any] = await self.post("/v1/auth/tokens", body, authenticate=False)
        self.use_token(issued["token"])
        return issued

    async def logout(self) -> None:
        """Revoke the current token on the server and forget it."""
        await self.delete("/v1/auth/tokens/current")
        self.use_token(None)

    async def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.get("/v1/auth/whoami")
        return result

    # -- what a VM's host sees ---------------------------------------------------------

    async def vm_console_output(self, vm_id: str, lines: int = 50) -> dict[str, Any]:
        """The tail of the VM's serial console: ``{"vm_id", "host_id", "lines", "output"}``."""
        result: dict[str, Any] = await self.get(
            path_of("/v1/vms", vm_id, "console-output"), {"lines": lines}
        )
        return result

    async def vm_stats(self, vm_id: str) -> dict[str, Any]:
        """CPU time, memory, disk and network counters of a running VM, read now."""
        result: dict[str, Any] = await self.get(path_of("/v1/vms", vm_id, "stats"))
        return result

    # -- operations -----------------------------------------------------------------

    async def operation(self, op_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(self._operation_path(op_id))
        return result

    async def wait_operation(
        self,
        op_id: str,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        *,
        raise_on_failure: bool = False,
    ) -> dict[str, Any]:
        """Wait for the operation to end and return it (``WaitTimeout`` if it does not
        within ``timeout`` seconds; None waits for ever)."""
        wait = OperationWait(timeout, on_progress)
        while True:
            seconds = wait.next_wait()
            params = {"wait": f"{seconds:g}"} if seconds > 0 else None
            op: dict[str, Any] = await self.get(
                self._operation_path(op_id), params, timeout=seconds + self.timeout
            )
            if wait.feed(op):
                if raise_on_failure and op.get("state") == "failed":
                    raise OperationFailed(op)
                return op
            if wait.expired():
                raise WaitTimeout(op, timeout or 0.0)


__all__ = ["AsyncClient"]
