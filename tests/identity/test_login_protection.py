"""Failed logins lock an account (and an address) for a growing while."""

from __future__ import annotations

import pytest

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
