"""Tenants and users: life cycle, freezing, uniqueness, sessions bound to user status."""

from __future__ import annotations

import asyncio

from tests.conftest import login
from tests.identity.helpers import PASSWORD, make_tenant, make_user


async def test_tenant_life_cycle(client, admin, container):
    tenant, owner = await make_tenant(client, admin, "acme")
    assert tenant["status"] == "active" and tenant["balance"] == "0.0000"
    r = await client.post(
        "/v1/tenants",
        json={"name": "acme", "owner": {"username": "x", "password": PASSWORD}},
        headers=admin,
    )
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"

    r = await client.post(
        "/v1/tenants",
        json={"name": "Bad Name!", "owner": {"username": "x", "password": PASSWORD}},
        headers=admin,
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "name"

    # Tenants are an admin-only collection.
    r = await client.get("/v1/tenants", headers=owner)
    assert r.status_code == 403 and "tenant:read" in r.json()["detail"]
    r = await client.get(f"/v1/tenants/{tenant['id']}", headers=owner)
    assert r.status_code == 200

    # Freeze: reads work, every mutation is refused with the reason; unfreeze restores.
    r = await client.post(f"/v1/tenants/{tenant['id']}/actions/freeze", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "frozen"
    assert (await client.get("/v1/quotas", headers=owner)).status_code == 200
    r = await client.post("/v1/users", json={"username": "u1", "password": PASSWORD}, headers=owner)
    assert r.status_code == 403 and r.json()["reason"] == "tenant_frozen"
    r = await client.post("/v1/api-keys", json={}, headers=owner)
    assert r.status_code == 403 and "frozen" in r.json()["detail"]
    r = await client.post(f"/v1/tenants/{tenant['id']}/actions/unfreeze", headers=admin)
    assert r.json()["status"] == "active"
    r = await client.post("/v1/users", json={"username": "u1", "password": PASSWORD}, headers=owner)
    assert r.status_code == 201

    # Delete only when empty: a resource counted in a quota blocks deletion.
    async with container.db.uow() as uow:
        await container.quotas.consume(uow, tenant["id"], "vms", 1)
        await uow.commit()
    r = await client.delete(f"/v1/tenants/{tenant['id']}", headers=admin)
    assert r.status_code == 409 and "resources" in r.json()["detail"]
    async with container.db.uow() as uow:
        await container.quotas.release(uow, tenant["id"], "vms", 1)
        await uow.commit()
    r = await client.delete(f"/v1/tenants/{tenant['id']}", headers=admin)
    assert r.status_code == 204
    assert (await client.get("/v1/operations", headers=owner)).status_code == 401
    r = await client.post(
        "/v1/auth/tokens", json={"tenant": "acme", "username": "owner", "password": PASSWORD}
    )
    assert r.status_code == 401


async def test_system_tenant_is_protected(client, admin):
    r = await client.get("/v1/tenants?name=system", headers=admin)
    system = r.json()["items"][0]
    assert (
        await client.post(f"/v1/tenants/{system['id']}/actions/freeze", headers=admin)
    ).status_code == 409
    assert (await client.delete(f"/v1/tenants/{system['id']}", headers=admin)).status_code == 409


async def test_usernames_unique_per_tenant(client, admin):
    _, owner_a = await make_tenant(client, admin, "alpha")
    _, owner_b = await make_tenant(client, admin, "beta")
    await make_user(client, owner_a, "alpha", "dev", "operator")
    r = await client.post(
        "/v1/users",
        json={"username": "dev", "password": PASSWORD, "role": "readonly"},
        headers=owner_a,
    )
    assert r.status_code == 409
    await make_user(client, owner_b, "beta", "dev", "readonly")  # other tenant: fine


async def test_user_management_and_status_binding(client, admin):
    _, owner = await make_tenant(client, admin, "gamma")
    user, user_h = await make_user(client, owner, "gamma", "ops", "operator")
    assert (await client.get("/v1/users/me", headers=user_h)).json()["username"] == "ops"

    # Disabling revokes sessions at once (not after a cache expires).
    r = await client.post(f"/v1/users/{user['id']}/actions/disable", headers=owner)
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = await client.get("/v1/operations", headers=user_h)
    assert r.status_code == 401
    r = await client.post(
        "/v1/auth/tokens", json={"tenant": "gamma", "username": "ops", "password": PASSWORD}
    )
    assert r.status_code == 401 and "disabled" in r.json()["detail"]
    await client.post(f"/v1/users/{user['id']}/actions/enable", headers=owner)
    user_h = await login(client, "ops", PASSWORD, tenant="gamma")

    # Reset by the owner ends the user's sessions; the new password works.
    r = await client.post(
        f"/v1/users/{user['id']}/actions/reset-password",
        json={"password": "Another-Pass-2"},
        headers=owner,
    )
    assert r.status_code == 200
    assert (await client.get("/v1/operations", headers=user_h)).status_code == 401
    user_h = await login(client, "ops", "Another-Pass-2", tenant="gamma")

    # Own password change: wrong old password refused, right one works.
    r = await client.post(
        "/v1/users/me/actions/change-password",
        json={"old_password": "nope", "new_password": "Third-Pass-3"},
        headers=user_h,
    )
    assert r.status_code == 401
    r = await client.post(
        "/v1/users/me/actions/change-password",
        json={"old_password": "Another-Pass-2", "new_password": "Third-Pass-3"},
        headers=user_h,
    )
    assert r.status_code == 204
    await login(client, "ops", "Third-Pass-3", tenant="gamma")

    # Weak passwords are refused naming the field.
    r = await client.post(
        "/v1/users", json={"username": "weak", "password": "short"}, headers=owner
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "password"

    # Nobody deletes themselves; the last owner stays.
    me = (await client.get("/v1/users/me", headers=owner)).json()
    assert (await client.delete(f"/v1/users/{me['id']}", headers=owner)).status_code == 409
    assert (await client.delete(f"/v1/users/{user['id']}", headers=owner)).status_code == 204
    assert (await client.get(f"/v1/users/{user['id']}", headers=owner)).status_code == 404


async def test_admin_creates_user_in_tenant(client, admin):
    tenant, _ = await make_tenant(client, admin, "delta")
    r = await client.post(
        "/v1/users",
        json={
            "username": "helper",
            "password": PASSWORD,
            "role": "admin",
            "tenant_id": tenant["id"],
        },
        headers=admin,
    )
    assert r.status_code == 201 and r.json()["tenant_id"] == tenant["id"]
    r = await client.get(f"/v1/users?tenant_id={tenant['id']}", headers=admin)
    assert {u["username"] for u in r.json()["items"]} == {"owner", "helper"}


async def test_concurrent_tenant_creates_with_one_idempotency_key(client, admin):
    body = {"name": "same-key", "owner": {"username": "o", "password": PASSWORD}}
    headers = {**admin, "Idempotency-Key": "tenant-create-1"}
    responses = await asyncio.gather(
        *[client.post("/v1/tenants", json=body, headers=headers) for _ in range(50)]
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.content for r in responses}) == 1
    r = await client.get("/v1/tenants?name=same-key", headers=admin)
    assert len(r.json()["items"]) == 1
