"""The operation (audit) log: logins, mutations and operation outcomes, and its filters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.settings import Settings
from tests.conftest import ADMIN_PASSWORD, login
from tests.support.slow_ops import KIND, plugin_settings, start_steps, wait_op


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


async def events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    r = await client.get("/v1/events", params={"limit": 500, **params}, headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_login_success_is_an_event_with_request_id_and_source(
    client: httpx.AsyncClient,
):
    r = await client.post(
        "/v1/auth/tokens",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        headers={"X-Request-Id": "req-login-ok-1"},
    )
    assert r.status_code == 201
    assert r.headers["x-request-id"] == "req-login-ok-1"
    admin = {"Authorization": f"Bearer {r.json()['token']}"}
    [event] = await events(client, admin, action="auth.login", result="success")
    assert event["request_id"] == "req-login-ok-1"
    assert event["source_ip"] == "127.0.0.1"
    assert event["actor_name"] == "system/admin"
    assert event["actor_id"] == r.json()["user"]["id"]
    assert event["tenant_id"] == r.json()["user"]["tenant_id"]
    assert event["status_code"] == 201
    assert event["failure_reason"] is None
    assert ADMIN_PASSWORD not in str(event)


async def test_login_failure_is_an_event_with_the_reason(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    r = await client.post(
        "/v1/auth/tokens",
        json={"username": "admin", "password": "not-the-password"},
        headers={"X-Request-Id": "req-login-bad-1"},
    )
    assert r.status_code == 401
    assert r.headers["x-request-id"] == "req-login-bad-1"
    [event] = await events(client, admin, action="auth.login", result="failure")
    assert event["request_id"] == "req-login-bad-1"
    assert event["source_ip"] == "127.0.0.1"
    assert event["status_code"] == 401
    assert "wrong" in event["failure_reason"]
    assert event["details"].get("username") == "admin"
    assert "not-the-password" not in str(event)


async def test_a_bad_request_id_is_replaced(client: httpx.AsyncClient, admin: dict[str, str]):
    for bad in ("x" * 65, "tab\there"):
        r = await client.get("/v1/operations", headers={**admin, "X-Request-Id": bad})
        assert r.status_code == 200
        assert r.headers["x-request-id"] != bad
        assert 0 < len(r.headers["x-request-id"]) <= 64
    r = await client.get("/v1/operations", headers=admin)
    assert r.headers["x-request-id"]


async def test_successful_mutation_is_an_event_with_its_resource_and_operation(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    r = await client.post(
        "/v1/test/steps",
        json={"steps": 1, "step_seconds": 0},
        headers={**admin, "X-Request-Id": "req-create-1"},
    )
    op = r.json()["operation"]
    [event] = await events(client, admin, resource_id=op["resource_id"], action="test.steps.create")
    assert event["result"] == "success"
    assert event["status_code"] == 202
    assert event["operation_id"] == op["id"]
    assert event["request_id"] == "req-create-1" == op["request_id"]
    assert event["actor_name"] == "system/admin"
    assert event["auth_method"] == "token"


async def test_failed_mutation_is_recorded_with_its_reason(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    r = await client.post("/v1/test/conflict", json={"steps": 1, "step_seconds": 0}, headers=admin)
    assert r.status_code == 409
    r = await client.post("/v1/test/steps", json={"steps": 0, "step_seconds": 0}, headers=admin)
    assert r.status_code == 422
    failures = await events(client, admin, result="failure")
    by_action = {e["action"]: e for e in failures}
    conflict = by_action["test.conflict"]
    assert conflict["status_code"] == 409
    assert conflict["failure_reason"].startswith("test conflict after creating op-")
    assert conflict["actor_name"] == "system/admin"
    invalid = by_action["test.steps.create"]
    assert invalid["status_code"] == 422
    assert "steps" in invalid["failure_reason"]
    # Nothing of the failed requests was committed besides their events.
    assert await events(client, admin, result="success", action="test.conflict") == []


async def test_operation_outcomes_are_events(client: httpx.AsyncClient, admin: dict[str, str]):
    good = await start_steps(client, admin, steps=1, step_seconds=0)
    bad = await start_steps(
        client, admin, steps=1, step_seconds=0, fail_at=0, fail_mode="permanent"
    )
    await wait_op(client, admin, good["id"])
    await wait_op(client, admin, bad["id"])
    done = await events(client, admin, action=KIND)
    by_op = {e["operation_id"]: e for e in done}
    assert by_op[good["id"]]["result"] == "success"
    assert by_op[good["id"]]["resource_id"] == good["resource_id"]
    assert by_op[good["id"]]["tenant_id"] == good["tenant_id"]
    assert by_op[bad["id"]]["result"] == "failure"
    assert "failed for good" in by_op[bad["id"]]["failure_reason"]
    assert len(done) == 2


async def test_filters(client: httpx.AsyncClient, admin: dict[str, str]):
    before = datetime.now(UTC)
    await asyncio.sleep(0.01)
    first = await start_steps(client, admin, steps=1, step_seconds=0)
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    second = await start_steps(client, admin, steps=1, step_seconds=0)
    await client.post("/v1/auth/tokens", json={"username": "admin", "password": "wrong-pass"})

    create = {"action": "test.steps.create"}
    ids = {
        e["resource_id"] for e in await events(client, admin, since=before.isoformat(), **create)
    }
    assert ids == {first["resource_id"], second["resource_id"]}
    [e] = await events(client, admin, until=middle.isoformat(), since=before.isoformat(), **create)
    assert e["resource_id"] == first["resource_id"]
    [e] = await events(client, admin, since=middle.isoformat(), **create)
    assert e["resource_id"] == second["resource_id"]
    # Times without a zone are UTC; "Z" works as well as "+00:00".
    naive = middle.replace(tzinfo=None).isoformat()
    [e] = await events(client, admin, since=naive, **create)
    assert e["resource_id"] == second["resource_id"]
    zulu = middle.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    [e] = await events(client, admin, since=zulu, **create)
    assert e["resource_id"] == second["resource_id"]
    later = (middle + timedelta(hours=2)).astimezone(UTC).isoformat()
    assert await events(client, admin, since=later) == []

    [e] = await events(client, admin, resource_id=first["resource_id"], **create)
    assert e["operation_id"] == first["id"]
    assert {e["action"] for e in await events(client, admin, resource_id=first["resource_id"])} <= {
        "test.steps.create",
        KIND,
    }

    user_id = e["actor_id"]
    by_id = await events(client, admin, actor=user_id, **create)
    by_name = await events(client, admin, actor="system/admin", **create)
    assert len(by_id) == len(by_name) == 2
    assert await events(client, admin, actor="system/nobody") == []

    assert {e["result"] for e in await events(client, admin, action="auth.login")} == {
        "success",
        "failure",
    }
    [failed] = await events(client, admin, action="auth.login", result="failure")
    assert failed["status_code"] == 401
    all_events = await events(client, admin)
    assert [e["id"] for e in all_events] == sorted((e["id"] for e in all_events), reverse=True)


async def test_bad_filters_are_400s_not_500s(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.get("/v1/events", params={"result": "maybe"}, headers=admin)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "result"
    r = await client.get(
        "/v1/events",
        params={"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
        headers=admin,
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "since"
    # One bound with a zone and one without must compare, not crash.
    r = await client.get(
        "/v1/events",
        params={"since": "2030-01-02T00:00:00", "until": "2030-01-01T00:00:00+00:00"},
        headers=admin,
    )
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "since"
    r = await client.get(
        "/v1/events",
        params={"since": "2020-01-01T00:00:00", "until": "2030-01-01T00:00:00+05:00"},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    # Times that leave the calendar once in UTC are refused, not an overflow and a 500.
    for extreme in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        r = await client.get("/v1/events", params={"until": extreme}, headers=admin)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["field"] == "until"
    for edge in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59"):
        r = await client.get("/v1/events", params={"since": edge}, headers=admin)
        assert r.status_code == 200, r.text
    r = await client.get("/v1/events", params={"since": "yesterday"}, headers=admin)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "since"


async def test_tenant_sees_only_its_own_events(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.post(
        "/v1/tenants",
        json={"name": "acme", "owner": {"username": "owner", "password": "Owner-Pass-1"}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    tenant_id = r.json()["id"]
    owner = await login(client, "owner", "Owner-Pass-1", tenant="acme")
    mine = await start_steps(client, owner, steps=1, step_seconds=0)
    theirs = await start_steps(client, admin, steps=1, step_seconds=0)
    visible = await events(client, owner)
    assert visible and all(e["tenant_id"] == tenant_id for e in visible)
    assert mine["resource_id"] in {e["resource_id"] for e in visible}
    assert theirs["resource_id"] not in {e["resource_id"] for e in visible}
    # Asking for another tenant's events does not widen the view.
    other = await events(client, owner, tenant_id=theirs["tenant_id"])
    assert all(e["tenant_id"] == tenant_id for e in other)
