"""API keys: secret shown once, signed requests, every refusal is a 401 with a reason."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from tests.identity.helpers import make_tenant, signed


async def _key(client, headers, **body):
    r = await client.post("/v1/api-keys", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_signed_requests(client, admin):
    _, owner = await make_tenant(client, admin, "keys")
    key = await _key(client, owner, description="ci")
    assert key["id"].startswith("key-") and key["secret"].startswith("sk_")
    r = await client.get(f"/v1/api-keys/{key['id']}", headers=owner)
    assert r.status_code == 200 and "secret" not in r.json()

    r = await client.request(**signed(key["id"], key["secret"], "GET", "/v1/auth/whoami"))
    assert r.status_code == 200 and r.json()["username"] == "owner"
    # Query strings are part of the signature, in canonical order.
    r = await client.request(
        **signed(key["id"], key["secret"], "GET", "/v1/events", query="result=success&limit=5")
    )
    assert r.status_code == 200, r.text
    # A signed mutation with a body; the event names the auth method.
    r = await client.request(
        **signed(
            key["id"],
            key["secret"],
            "POST",
            "/v1/users",
            body={"username": "bot", "password": "Bot-Pass-12", "role": "readonly"},
        )
    )
    assert r.status_code == 201, r.text
    r = await client.get(f"/v1/events?resource_id={r.json()['id']}", headers=owner)
    event = r.json()["items"][0]
    assert event["auth_method"] == "apikey" and event["actor_name"] == "keys/owner"


async def test_signature_refusals(client, admin):
    _, owner = await make_tenant(client, admin, "refusals")
    key = await _key(client, owner)
    kid, secret = key["id"], key["secret"]

    bad = signed(kid, "sk_wrong", "GET", "/v1/auth/whoami")
    r = await client.request(**bad)
    assert r.status_code == 401 and "signature does not match" in r.json()["detail"]

    stale = signed(kid, secret, "GET", "/v1/auth/whoami", timestamp=int(time.time()) - 400)
    r = await client.request(**stale)
    assert r.status_code == 401 and "behind the server clock" in r.json()["detail"]

    tampered = signed(
        kid, secret, "POST", "/v1/roles", body={"name": "a", "permissions": ["vm:read"]}
    )
    tampered["content"] = tampered["content"].replace(b'"a"', b'"b"')
    r = await client.request(**tampered)
    assert r.status_code == 401 and "signature does not match" in r.json()["detail"]
    assert (await client.get("/v1/roles", headers=owner)).json()["items"][-1]["name"] != "b"

    query_swap = signed(kid, secret, "GET", "/v1/events", query="limit=5")
    query_swap["url"] = "/v1/events?limit=6"
    assert (await client.request(**query_swap)).status_code == 401

    r = await client.request(**signed("key-doesnotexist", secret, "GET", "/v1/auth/whoami"))
    assert r.status_code == 401 and "unknown API key" in r.json()["detail"]

    r = await client.get("/v1/auth/whoami", headers={"Authorization": "ALTO1-HMAC-SHA256 junk"})
    assert r.status_code == 401 and "malformed" in r.json()["detail"]

    # Revocation takes effect at once, even right after a successful (cached) use.
    ok = signed(kid, secret, "GET", "/v1/auth/whoami")
    assert (await client.request(**ok)).status_code == 200
    assert (await client.delete(f"/v1/api-keys/{kid}", headers=owner)).status_code == 204
    r = await client.request(**signed(kid, secret, "GET", "/v1/auth/whoami"))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


async def test_expiry_and_role_narrowing(client, admin):
    _, owner = await make_tenant(client, admin, "narrow")
    past_soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    r = await client.post(
        "/v1/api-keys", json={"expires_at": "2000-01-01T00:00:00Z"}, headers=owner
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "expires_at"
    short = await _key(client, owner, expires_at=past_soon)
    await asyncio.sleep(1.2)
    r = await client.request(**signed(short["id"], short["secret"], "GET", "/v1/auth/whoami"))
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    ro = await _key(client, owner, role="readonly")
    r = await client.request(**signed(ro["id"], ro["secret"], "GET", "/v1/users"))
    assert r.status_code == 200
    r = await client.request(
        **signed(
            ro["id"],
            ro["secret"],
            "POST",
            "/v1/roles",
            body={"name": "x", "permissions": ["vm:read"]},
        )
    )
    assert r.status_code == 403 and "narrowed by the API key" in r.json()["detail"]
    # Keys cannot mint keys.
    r = await client.request(**signed(ro["id"], ro["secret"], "POST", "/v1/api-keys", body={}))
    assert r.status_code == 403
