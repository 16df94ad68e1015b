"""Failed logins lock an account (and an address) for a growing while."""

from __future__ import annotations

import asyncio

import pytest

from altostack.domain.errors import Unauthenticated
from tests.conftest import make_settings
from tests.identity.helpers import PASSWORD, make_tenant


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, login_max_failures_user=3, login_max_failures_ip=6)


def _body(user, password, tenant="lock"):
    return {"tenant": tenant, "username": user, "password": password}


async def test_user_lockout(client, admin):
    await make_tenant(client, admin, "lock")
    for _ in range(3):
        r = await client.post("/v1/auth/tokens", json=_body("owner", "wrong"))
        assert r.status_code == 401
    r = await client.post("/v1/auth/tokens", json=_body("owner", PASSWORD))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "this account" in r.json()["detail"]
    r = await client.get("/v1/events?action=auth.login&result=failure", headers=admin)
    assert len(r.json()["items"]) >= 4


async def test_ip_lockout_across_usernames(client, admin):
    await make_tenant(client, admin, "lock")
    for i in range(6):
        await client.post("/v1/auth/tokens", json=_body(f"ghost{i}", "wrong"))
    r = await client.post("/v1/auth/tokens", json=_body("owner", PASSWORD))
    assert r.status_code == 429 and "this address" in r.json()["detail"]


async def test_success_resets_user_counter(client, admin):
    await make_tenant(client, admin, "lock")
    for _ in range(2):
        await client.post("/v1/auth/tokens", json=_body("owner", "wrong"))
    assert (await client.post("/v1/auth/tokens", json=_body("owner", PASSWORD))).status_code == 201
    for _ in range(2):
        await client.post("/v1/auth/tokens", json=_body("owner", "wrong"))
    assert (await client.post("/v1/auth/tokens", json=_body("owner", PASSWORD))).status_code == 201


async def test_concurrent_misses_load_a_token_once(client, admin, container, monkeypatch):
    """When a cached session expires under load, the requests that miss together share one
    database load instead of queueing one each (the p99 stalls of bench/api.py)."""
    token = admin["Authorization"].split()[1]
    auth = container.auth
    auth._cache.clear()
    loads = 0
    original = auth._load_token_principal

    async def counting(key: str):
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return await original(key)

    monkeypatch.setattr(auth, "_load_token_principal", counting)
    principals = await asyncio.gather(*(auth.authenticate_token(token) for _ in range(40)))
    assert loads == 1
    assert len({p.user_id for p in principals}) == 1
    with pytest.raises(Unauthenticated):
        await asyncio.gather(*(auth.authenticate_token("alto_wrong") for _ in range(5)))
    assert loads == 2
