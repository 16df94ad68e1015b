"""The synchronous client (what the CLI uses)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpx

from altostack.client.base import BaseClient, QueryArg, path_of
from altostack.client.credentials import Credentials
from altostack.client.errors import OperationFailed, TransportFailure, WaitTimeout
from altostack.client.flows import OperationWait, Pager, ProgressCallback
from altostack.client.retry import RetryPolicy


class Client(BaseClient):
    """Talks to one Altostack API with one identity.

    ``Client()`` with no arguments finds the URL and credentials in the environment or
    the credentials file (see :mod:`altostack.client.credentials`).
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
        transport: httpx.BaseTransport | None = None,
        verify: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
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
        self._http = httpx.Client(
            base_url=self.base_url, transport=transport, verify=verify, timeout=timeout
        )
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- raw exchange ---------------------------------------------------------------

    def send(
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
                response = self._http.send(request, auth=auth)
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
                response.close()
            attempt += 1
            self._sleep(delay)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON of a successful call; a typed ``ApiError`` otherwise."""
        return self.decode(self.send(method, path, **kwargs))

    def get(self, path: str, params: QueryArg = None, **kwargs: Any) -> Any:
        return self.request("GET", path, params=params, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("PUT", path, json=json, **kwargs)

    def patch(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("PATCH", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    # -- raw bodies (image files) ---------------------------------------------------

    def send_content(
        self,
        method: str,
        path: str,
        content: bytes | Iterable[bytes],
        *,
        params: QueryArg = None,
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send a raw body, e.g. an image file streamed from an iterator of chunks.

        Unlike :meth:`send` this is tried once: a streamed body is used up by the first
        try and cannot be replayed. With an API key httpx reads the whole body first,
        because the signature covers its hash.
        """
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
            return self._http.send(request, auth=self._auth)
        except httpx.TransportError as exc:
            raise TransportFailure(
                f"{method} {self.base_url}{path}: {exc or type(exc).__name__}", attempts=1
            ) from exc

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: QueryArg = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[httpx.Response]:
        """A successful answer whose body is read as it arrives (``iter_bytes()``), for
        downloads too large to hold in memory; an error answer raises its ``ApiError``.

        Connection failures and 503 before the body starts are retried like :meth:`send`.
        """
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
                response = self._http.send(request, auth=self._auth, stream=True)
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
                response.close()
            attempt += 1
            self._sleep(delay)
        try:
            if response.status_code >= 400:
                response.read()
                self.decode(response)  # raises the typed error
            yield response
        finally:
            response.close()

    # -- collections ----------------------------------------------------------------

    def list_all(
        self, path: str, *, page_size: int = 100, max_items: int | None = None, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a collection, fetching pages lazily by ``next_cursor``."""
        pager = Pager(filters, page_size, max_items)
        while not pager.done:
            yield from pager.feed(self.get(path, pager.params()))

    def operations(self, **filters: Any) -> Iterator[dict[str, Any]]:
        return self.list_all("/v1/operations", **filters)

    def events(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """The audit log, newest first (``since``, ``until``, ``resource_id``, ``actor``,
        ``action``, ``result``, ``tenant_id``)."""
        return self.list_all("/v1/events", **filters)

    # -- sessions -------------------------------------------------------------------

    def login(self, tenant: str | None, username: str, password: str) -> dict[str, Any]:
        """Get a bearer token and use it from now on; returns ``{"token", "expires_at",
        "user"}``."""
        body = {
            "tenant": tenant or self.credentials.tenant or "system",
            "username": username,
            "password": password,
        }
        issued: dict[str, Any] = self.post("/v1/auth/tokens", body, authenticate=False)
        self.use_token(issued["token"])
        return issued

    def logout(self) -> None:
        """Revoke the current token on the server and forget it."""
        self.delete("/v1/auth/tokens/current")
        self.use_token(None)

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/auth/whoami")
        return result

    # -- what a VM's host sees ---------------------------------------------------------

    def vm_console_output(self, vm_id: str, lines: int = 50) -> dict[str, Any]:
        """The tail of the VM's serial console: ``{"vm_id", "host_id", "lines", "output"}``."""
        result: dict[str, Any] = self.get(
            path_of("/v1/vms", vm_id, "console-output"), {"lines": lines}
        )
        return result

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        """CPU time, memory, disk and network counters of a running VM, read now."""
        result: dict[str, Any] = self.get(path_of("/v1/vms", vm_id, "stats"))
        return result

    # -- operations -----------------------------------------------------------------

    def operation(self, op_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(self._operation_path(op_id))
        return result

    def wait_operation(
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
            op: dict[str, Any] = self.get(
                self._operation_path(op_id), params, timeout=seconds + self.timeout
            )
            if wait.feed(op):
                if raise_on_failure and op.get("state") == "failed":
                    raise OperationFailed(op)
                return op
            if wait.expired():
                raise WaitTimeout(op, timeout or 0.0)


__all__ = ["Client", "path_of"]
