"""Helpers for identity tests: tenants with owners, users, signed requests."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from altostack.client.signing import authorization_header
from tests.conftest import login

PASSWORD = "Tenant-Pass-1"


async def make_tenant(
    client: httpx.AsyncClient, admin: dict[str, str], name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A tenant and its owner's auth headers."""
    r = await client.post(
        "/v1/tenants",
        json={"name": name, "owner": {"username": "owner", "password": PASSWORD}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return r.json(), await login(client, "owner", PASSWORD, tenant=name)


async def make_user(
    client: httpx.AsyncClient,
    owner: dict[str, str],
    tenant: str,
    username: str,
    role: str,
    **extra: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    r = await client.post(
        "/v1/users",
        json={"username": username, "password": PASSWORD, "role": role, **extra},
        headers=owner,
    )
    assert r.status_code == 201, r.text
    return r.json(), await login(client, username, PASSWORD, tenant=tenant)


def signed(
    key_id: str,
    secret: str,
    method: str,
    path: str,
    *,
    query: str = "",
    body: Any = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """kwargs for client.request() with an ALTO1-HMAC-SHA256 signature."""
    raw = b"" if body is None else json.dumps(body).encode()
    header = authorization_header(
        key_id,
        secret,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        method=method,
        path=path,
        query=query,
        body=raw,
    )
    headers = {"Authorization": header}
    if body is not None:
        headers["Content-Type"] = "application/json"
    url = path + (f"?{query}" if query else "")
    return {"method": method, "url": url, "content": raw, "headers": headers}
