"""What the sync and the async client share: configuration, request building, decoding.

Everything here is free of I/O, so ``Client`` and ``AsyncClient`` are only the thin loops
that send, sleep and retry, and cannot drift apart in behaviour.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from altostack import __version__
from altostack.client.auth import ApiKeyAuth, BearerAuth
from altostack.client.credentials import Credentials, load_credentials
from altostack.client.errors import ConfigurationError, from_response
from altostack.client.flows import Params, query_params
from altostack.client.retry import RetryPolicy

DEFAULT_TIMEOUT = 30.0
USER_AGENT = f"altostack-sdk/{__version__}"
IDEMPOTENT_METHODS = frozenset({"POST"})

QueryArg = Mapping[str, Any] | Params | None


def path_of(*segments: str) -> str:
    """Join path segments, escaping each, so an id can never smuggle ``/`` or ``?``.

    ``path_of("/v1/vms", vm_id, "actions", "stop")`` → ``/v1/vms/<vm_id>/actions/stop``.
    """
    head, *rest = segments
    return "/".join([head.rstrip("/"), *(quote(str(s), safe="") for s in rest)])


def _auth_for(creds: Credentials) -> httpx.Auth | None:
    kind = creds.auth_kind
    if kind == "token" and creds.token:
        return BearerAuth(creds.token)
    if kind == "api-key" and creds.access_key_id and creds.secret_access_key:
        return ApiKeyAuth(creds.access_key_id, creds.secret_access_key)
    return None


class BaseClient:
    """Resolved settings plus the pure steps around each HTTP exchange."""

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
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        if credentials is None:
            credentials = load_credentials(
                url,
                token=token,
                access_key_id=access_key_id,
                secret_access_key=secret_access_key,
                tenant=tenant,
                profile=profile,
            )
        if not credentials.url:
            raise ConfigurationError(
                "no API URL: pass url=…, set ALTO_URL, or run `alto login --url …`"
            )
        self.credentials = credentials
        self.base_url = credentials.url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._auth = _auth_for(credentials)

    @property
    def auth_kind(self) -> str | None:
        if isinstance(self._auth, BearerAuth):
            return "token"
        if isinstance(self._auth, ApiKeyAuth):
            return "api-key"
        return None

    @property
    def token(self) -> str | None:
        return self._auth.token if isinstance(self._auth, BearerAuth) else None

    def use_token(self, token: str | None) -> None:
        """Authenticate the following requests with this bearer token (None: none)."""
        self._auth = BearerAuth(token) if token else None

    def _headers(
        self, method: str, idempotency_key: str | None, extra: Mapping[str, str] | None
    ) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if method in IDEMPOTENT_METHODS:
            # One key per call, fixed before the first try, so every retry is the same
            # request in the server's eyes.
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        headers.update(extra or {})
        return headers

    @staticmethod
    def _params(params: QueryArg) -> Params:
        if params is None:
            return []
        if isinstance(params, list):
            return params
        return query_params(params)

    def _request_timeout(self, timeout: float | None) -> httpx.Timeout:
        return httpx.Timeout(timeout if timeout is not None else self.timeout)

    @staticmethod
    def decode(response: httpx.Response) -> Any:
        """The JSON of a success, None for an empty one; the typed error otherwise."""
        if response.status_code >= 400:
            raise from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        ctype = response.headers.get("content-type", "")
        if "json" in ctype:
            return response.json()
        return response.text

    @staticmethod
    def _operation_path(op_id: str) -> str:
        return path_of("/v1/operations", op_id)
