"""Quotas: shown with usage, set by admins, never exceeded under concurrency."""

from __future__ import annotations

import asyncio

from tests.identity.helpers import make_tenant


async def test_show_and_set(client, admin):
    tenant, owner = await make_tenant(client, admin, "quota-a")
    r = await client.get("/v1/quotas", headers=owner)
    body = r.json()
    assert r.status_code == 200 and body["tenant_id"] == tenant["id"]
    assert body["quotas"]["vms"] == {"limit": 20, "usage": 0, "default": True}
    assert set(body["quotas"]) >= {"vcpus", "memory_mib", "api_keys", "load_balancers"}

    r = await client.put(
        f"/v1/quotas/{tenant['id']}", json={"vms": 3, "api_keys": -1}, headers=owner
    )
    assert r.status_code == 403
    r = await client.put(
        f"/v1/quotas/{tenant['id']}", json={"vms": 3, "api_keys": -1}, headers=admin
    )
    assert r.status_code == 200
    assert r.json()["quotas"]["vms"] == {"limit": 3, "usage": 0, "default": False}
    r = await client.put(f"/v1/quotas/{tenant['id']}", json={"vms": None}, headers=admin)
    assert r.json()["quotas"]["vms"]["default"] is True
    r = await client.put(f"/v1/quotas/{tenant['id']}", json={"vms": -5}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "vms"
    r = await client.put("/v1/quotas/tenant-nope", json={"vms": 1}, headers=admin)
    assert r.status_code == 404
    r = await client.get(f"/v1/quotas?tenant_id={tenant['id']}", headers=admin)
    assert r.json()["quotas"]["vms"]["limit"] == 20


async def test_parallel_creates_never_exceed_quota(client, admin):
    tenant, owner = await make_tenant(client, admin, "quota-b")
    r = await client.put(f"/v1/quotas/{tenant['id']}", json={"api_keys": 10}, headers=admin)
    assert r.status_code == 200
    responses = await asyncio.gather(
        *[
            client.post("/v1/api-keys", json={"description": f"k{i}"}, headers=owner)
            for i in range(40)
        ]
    )
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 10 and codes.count(429) == 30, codes
    refusal = next(r.json() for r in responses if r.status_code == 429)
    assert refusal["code"] == "QuotaExceeded"
    assert refusal["quota"] == "api_keys" and refusal["limit"] == 10 and refusal["usage"] == 10
    r = await client.get("/v1/quotas", headers=owner)
    assert r.json()["quotas"]["api_keys"]["usage"] == 10

    # Revoking frees quota; lowering a limit below usage touches nothing existing.
    key_id = next(r.json()["id"] for r in responses if r.status_code == 201)
    assert (await client.delete(f"/v1/api-keys/{key_id}", headers=owner)).status_code == 204
    assert (await client.get("/v1/quotas", headers=owner)).json()["quotas"]["api_keys"][
        "usage"
    ] == 9
    await client.put(f"/v1/quotas/{tenant['id']}", json={"api_keys": 2}, headers=admin)
    r = await client.get("/v1/api-keys?status=active", headers=owner)
    assert len(r.json()["items"]) == 9
    r = await client.post("/v1/api-keys", json={}, headers=owner)
    assert r.status_code == 429
