"""Idempotency-Key: a retried POST gets the very same answer and changes nothing twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.db.types import utcnow
from altostack.services import idempotency
from altostack.services.idempotency import MAX_KEY_LENGTH, check_key, request_fingerprint
from altostack.settings import Settings
from tests.support.slow_ops import KIND, plugin_settings, serve

BODY = {"steps": 1, "step_seconds": 0}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


async def post(
    client: httpx.AsyncClient, headers: dict[str, str], key: str | None, body: Any = BODY
) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return await client.post("/v1/test/steps", json=body, headers={**headers, **extra})


async def op_ids(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    r = await client.get("/v1/operations", params={"kind": KIND, "limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


async def test_same_key_same_body_replays_the_first_answer(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    first = await post(client, admin, "create-1")
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = await post(client, admin, "create-1")
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.json()["operation"]["id"] == first.json()["operation"]["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == first.headers["content-type"]
    assert await op_ids(client, admin) == [first.json()["operation"]["id"]]


async def test_without_a_key_every_post_executes(client: httpx.AsyncClient, admin: dict[str, str]):
    a = await post(client, admin, None)
    b = await post(client, admin, None)
    assert a.json()["operation"]["id"] != b.json()["operation"]["id"]
    assert len(await op_ids(client, admin)) == 2


async def test_same_key_different_body_is_a_conflict(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    first = await post(client, admin, "create-2")
    assert first.status_code == 202
    other = await post(client, admin, "create-2", {"steps": 2, "step_seconds": 0})
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")
    problem = other.json()
    assert problem["code"] == "Conflict"
    assert "Idempotency-Key" in problem["detail"]
    assert "idempotent-replayed" not in other.headers
    # The same key on another path is another request too.
    r = await client.post(
        "/v1/test/conflict", json=BODY, headers={**admin, "Idempotency-Key": "create-2"}
    )
    assert r.status_code == 409
    assert "Idempotency-Key" in r.json()["detail"]
    assert await op_ids(client, admin) == [first.json()["operation"]["id"]]


async def test_fifty_concurrent_retries_create_one_operation(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    responses = await asyncio.gather(*(post(client, admin, "race-1") for _ in range(50)))
    statuses = {r.status_code for r in responses}
    assert statuses == {202}, [r.text for r in responses if r.status_code != 202][:3]
    bodies = {r.content for r in responses}
    assert len(bodies) == 1
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 49
    [op_id] = await op_ids(client, admin)
    assert responses[0].json()["operation"]["id"] == op_id


async def test_keys_are_per_caller(client: httpx.AsyncClient, admin: dict[str, str]):
    from tests.conftest import ADMIN_PASSWORD, login

    second_session = await login(client, "admin", ADMIN_PASSWORD)
    a = await post(client, admin, "shared")
    b = await post(client, second_session, "shared")
    # The same user in two sessions is the same caller: replayed.
    assert b.headers.get("idempotent-replayed") == "true"
    assert a.json()["operation"]["id"] == b.json()["operation"]["id"]

    r = await client.post(
        "/v1/tenants",
        json={"name": "acme", "owner": {"username": "owner", "password": "Owner-Pass-1"}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    owner = await login(client, "owner", "Owner-Pass-1", tenant="acme")
    c = await post(client, owner, "shared")
    assert c.status_code == 202
    assert "idempotent-replayed" not in c.headers
    assert c.json()["operation"]["id"] != a.json()["operation"]["id"]


async def test_a_failed_request_does_not_use_up_its_key(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    bad = await post(client, admin, "retry-after-fix", {"steps": 0, "step_seconds": 0})
    assert bad.status_code == 422
    good = await post(client, admin, "retry-after-fix")
    assert good.status_code == 202
    assert "idempotent-replayed" not in good.headers


async def test_an_expired_key_executes_again(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    settings = plugin_settings(db_url, tmp_path, idempotency_ttl_seconds=5)
    async with serve(settings) as (_c, client, admin):
        first = await post(client, admin, "short-lived")
        assert first.status_code == 202
        assert (await post(client, admin, "short-lived")).headers["idempotent-replayed"] == "true"
        # Jump the service's clock past the TTL instead of sleeping through it.
        monkeypatch.setattr(idempotency, "utcnow", lambda: utcnow() + timedelta(seconds=6))
        later = await post(client, admin, "short-lived")
        assert later.status_code == 202
        assert "idempotent-replayed" not in later.headers
        assert later.json()["operation"]["id"] != first.json()["operation"]["id"]
        # ...and the new answer is what the key replays from now on.
        again = await post(client, admin, "short-lived")
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == later.content
        assert len(await op_ids(client, admin)) == 2


async def test_an_unusable_key_is_refused_naming_the_header(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    for key in ("k" * (MAX_KEY_LENGTH + 1), "", "bad\x7fkey"):
        r = await post(client, admin, key)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["code"] == "InvalidRequest"
        assert problem["errors"][0]["field"] == "Idempotency-Key"
    assert await op_ids(client, admin) == []


async def test_longest_allowed_key_works(client: httpx.AsyncClient, admin: dict[str, str]):
    key = "k" * MAX_KEY_LENGTH
    first = await post(client, admin, key)
    assert first.status_code == 202, first.text
    assert (await post(client, admin, key)).headers["idempotent-replayed"] == "true"


def test_fingerprint_covers_method_path_query_and_body():
    base = request_fingerprint("POST", "/v1/x", "", b"{}")
    assert base == request_fingerprint("POST", "/v1/x", "", b"{}")
    assert base != request_fingerprint("PUT", "/v1/x", "", b"{}")
    assert base != request_fingerprint("POST", "/v1/y", "", b"{}")
    assert base != request_fingerprint("POST", "/v1/x", "a=1", b"{}")
    assert base != request_fingerprint("POST", "/v1/x", "", b"{} ")
    check_key("a" * MAX_KEY_LENGTH)
