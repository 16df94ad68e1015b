async def test_health(client):
    r = await client.get("/healthz")
    assert r.status_code == 200
    r = await client.get("/readyz")
    assert r.json()["checks"] == {"database": "ok", "bus": "ok"}


async def test_login_and_list(client, admin):
    r = await client.get("/v1/operations", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"items": [], "next_cursor": None}
