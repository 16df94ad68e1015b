"""The ``alto`` commands against a mocked API (httpx.MockTransport): request shapes,
outputs, exit codes, the credentials file, and the 202 wait helper."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from typer.testing import CliRunner

from altostack.cli.main import app
from altostack.cli.state import CliState
from altostack.client import load_credentials, update_profile
from altostack.client.credentials import read_profiles

URL = "http://alto.test"
Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers by ``"METHOD /path"`` and remembers every request."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, route: str, *replies: Reply) -> None:
        self.routes[route] = list(replies)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        replies = self.routes.get(route)
        if not replies:
            return problem(404, "NotFound", f"no route {route}")
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply(request) if callable(reply) else reply

    def bodies(self, route: str) -> list[Any]:
        method, path = route.split(" ", 1)
        return [
            json.loads(r.content) if r.content else None
            for r in self.requests
            if r.method == method and r.url.path == path
        ]


def problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "t", "title": code, "status": status, "detail": detail, "code": code}
    return httpx.Response(
        status, json={**body, "errors": [], **extra}, headers={"x-request-id": "rid-9"}
    )


def op(state: str, progress: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": "op-1",
        "kind": "vm.create",
        "resource_id": "vm-1",
        "state": state,
        "progress": progress,
        "error": None,
        **extra,
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("ALTO_"):
            monkeypatch.delenv(name)
    path = tmp_path / "credentials"
    monkeypatch.setenv("ALTO_CREDENTIALS_FILE", str(path))
    return path


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def alto(api: FakeApi) -> Callable[..., Any]:
    """Run ``alto`` in-process against the fake API, logged in with a token."""
    update_profile(None, url=URL, token="tok")

    def run(*args: str, input: str | None = None, code: int = 0) -> Any:
        state = CliState(transport=httpx.MockTransport(api))
        result = CliRunner().invoke(app, list(args), obj=state, input=input)
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def out_json(result: Any) -> Any:
    return json.loads(result.stdout)


# -- sessions -----------------------------------------------------------------------


def test_login_stores_url_and_token(isolated: Path, api: FakeApi) -> None:
    user = {"id": "user-1", "username": "bob", "tenant_id": "tenant-1", "role": "owner"}
    api.on(
        "POST /v1/auth/tokens",
        httpx.Response(201, json={"token": "T1", "expires_at": "x", "user": user}),
    )
    state = CliState(transport=httpx.MockTransport(api))
    args = ["-o", "json", "login", "--url", URL, "--tenant", "acme", "-u", "bob"]
    result = CliRunner().invoke(app, args, obj=state, input="pw\n")
    assert result.exit_code == 0, result.output
    assert api.bodies("POST /v1/auth/tokens") == [
        {"tenant": "acme", "username": "bob", "password": "pw"}
    ]
    assert out_json(result) == {"user": user, "expires_at": "x"}
    assert "T1" not in result.stdout
    assert read_profiles(isolated)["default"] == {
        "url": URL,
        "tenant": "acme",
        "username": "bob",
        "token": "T1",
    }
    assert stat.S_IMODE(isolated.stat().st_mode) == 0o600


def test_login_needs_an_url(api: FakeApi) -> None:
    state = CliState(transport=httpx.MockTransport(api))
    result = CliRunner().invoke(app, ["login", "-u", "x", "--password", "y"], obj=state)
    assert result.exit_code == 3 and "pass --url" in result.output


def test_logout_revokes_and_forgets(isolated: Path, api: FakeApi, alto: Any) -> None:
    api.on("DELETE /v1/auth/tokens/current", httpx.Response(204))
    alto("logout")
    assert api.requests[0].headers["authorization"] == "Bearer tok"
    assert "token" not in read_profiles(isolated)["default"]
    assert "no token" in alto("logout").output


def test_whoami_outputs(api: FakeApi, alto: Any) -> None:
    me = {"id": "user-1", "username": "admin", "tenant_name": "system", "is_platform_admin": True}
    api.on("GET /v1/auth/whoami", httpx.Response(200, json=me))
    assert out_json(alto("--output", "json", "whoami")) == me
    assert yaml.safe_load(alto("whoami", "-o", "yaml").stdout) == me
    table = alto("whoami").stdout
    assert "admin" in table and "is_platform_admin" in table and "yes" in table


def test_not_logged_in(isolated: Path) -> None:
    update_profile(None, url=URL)
    result = CliRunner().invoke(app, ["whoami"], obj=CliState())
    assert result.exit_code == 3 and "alto login" in result.output


def test_profile_option_selects_credentials(api: FakeApi, alto: Any) -> None:
    update_profile("lab", url=URL, token="lab-token")
    api.on("GET /v1/auth/whoami", httpx.Response(200, json={"id": "u"}))
    alto("--profile", "lab", "whoami")
    assert api.requests[-1].headers["authorization"] == "Bearer lab-token"


def test_api_error_message_and_exit_code(api: FakeApi, alto: Any) -> None:
    api.on(
        "GET /v1/operations/op-x",
        problem(404, "NotFound", "operation 'op-x' does not exist"),
    )
    result = alto("ops", "show", "op-x", code=1)
    assert "404 NotFound: operation 'op-x' does not exist" in result.stderr
    assert "rid-9" in result.stderr and result.stdout == ""


# -- operations and events ----------------------------------------------------------


def test_ops_list_filters_and_limit(api: FakeApi, alto: Any) -> None:
    items = [op("running", 10) | {"id": f"op-{i}"} for i in range(3)]
    api.on("GET /v1/operations", httpx.Response(200, json={"items": items, "next_cursor": "c"}))
    result = alto(
        "-o", "json", "ops", "list", "--state", "running", "--kind", "vm.create", "--limit", "3"
    )
    assert [o["id"] for o in out_json(result)] == ["op-0", "op-1", "op-2"]
    params = api.requests[0].url.params
    assert (params["state"], params["kind"], params["limit"]) == ("running", "vm.create", "3")
    assert "resource_id" not in params and len(api.requests) == 1
    table = alto("ops", "list").stdout
    assert "op-2" in table and "vm.create" in table


def test_ops_wait_success_and_failure(api: FakeApi, alto: Any) -> None:
    api.on(
        "GET /v1/operations/op-1",
        httpx.Response(200, json=op("running", 20)),
        httpx.Response(200, json=op("running", 70)),
        httpx.Response(200, json=op("succeeded", 100)),
    )
    result = alto("-o", "json", "ops", "wait", "op-1", "--timeout", "30")
    assert out_json(result)["state"] == "succeeded"
    assert all("wait" in r.url.params for r in api.requests)

    failed = op("failed", 40, error={"code": "NoCapacity", "message": "no host has room"})
    api.on("GET /v1/operations/op-1", httpx.Response(200, json=failed))
    result = alto("ops", "wait", "op-1", code=1)
    assert "no host has room" in result.stderr and "NoCapacity" in result.stderr


def test_ops_wait_timeout(api: FakeApi, alto: Any) -> None:
    api.on("GET /v1/operations/op-1", httpx.Response(200, json=op("running", 5)))
    result = alto("ops", "wait", "op-1", "--timeout", "0", code=4)
    assert "still running" in result.stderr and "alto ops wait op-1" in result.stderr


def test_events_filters(api: FakeApi, alto: Any) -> None:
    event = {"id": "evt-1", "time": "2030-01-02T03:04:05.123456Z", "action": "auth.login"}
    api.on("GET /v1/events", httpx.Response(200, json={"items": [event], "next_cursor": None}))
    result = alto(
        "events",
        "--action",
        "auth.login",
        "--result",
        "success",
        "--actor",
        "system/admin",
        "--since",
        "2030-01-01T00:00:00+00:00",
        "--limit",
        "10",
    )
    assert "2030-01-02 03:04:05Z" in result.stdout  # shortened for people
    params = api.requests[0].url.params
    assert params["action"] == "auth.login" and params["actor"] == "system/admin"
    assert params["since"] == "2030-01-01T00:00:00+00:00" and params["limit"] == "10"


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTO_BOOTSTRAP_ADMIN_PASSWORD", "Very-Secret-1")
    monkeypatch.setenv("ALTO_DB", "postgresql+asyncpg://alto:pgpass@db/alto")
    result = CliRunner().invoke(app, ["config", "show", "-o", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["bootstrap_admin_password"] == "********"
    assert "pgpass" not in result.stdout and "Very-Secret-1" not in result.stdout
    assert shown["db"] == "postgresql+asyncpg://alto:********@db/alto"


def test_up_is_still_there() -> None:
    result = CliRunner().invoke(app, ["up", "--help"])
    assert result.exit_code == 0 and "--data-dir" in result.stdout


# -- the 202 helper -----------------------------------------------------------------


def accepted(state: str = "pending") -> httpx.Response:
    return httpx.Response(
        202,
        json={"operation": op("pending", 0), "tenant": {"id": "tenant-9", "state": state}},
        headers={"location": "/v1/tenants/tenant-9"},
    )


def test_follow_operation_waits_then_prints_fresh_resource(api: FakeApi, alto: Any) -> None:
    api.on("DELETE /v1/tenants/tenant-9", accepted("deleting"))
    api.on("GET /v1/operations/op-1", httpx.Response(200, json=op("succeeded", 100)))
    api.on("GET /v1/tenants/tenant-9", problem(404, "NotFound", "gone"))
    result = alto("tenant", "delete", "tenant-9", "--yes")
    assert "is gone" in result.stderr

    api.on("DELETE /v1/tenants/tenant-9", accepted("deleting"))
    api.on("GET /v1/tenants/tenant-9", httpx.Response(200, json={"id": "tenant-9", "state": "x"}))
    assert out_json(alto("-o", "json", "tenant", "delete", "tenant-9", "-y")) == {
        "id": "tenant-9",
        "state": "x",
    }


def test_follow_operation_no_wait_and_failure(api: FakeApi, alto: Any) -> None:
    api.on("DELETE /v1/tenants/tenant-9", accepted("deleting"))
    result = alto("-o", "json", "tenant", "delete", "tenant-9", "-y", "--no-wait")
    assert out_json(result) == {"id": "tenant-9", "state": "deleting"}
    assert "alto ops wait op-1" in result.stderr
    assert not any(r.url.path.startswith("/v1/operations") for r in api.requests)

    bad = op("failed", 50, error={"code": "Busy", "message": "tenant has VMs"})
    api.on("GET /v1/operations/op-1", httpx.Response(200, json=bad))
    result = alto("tenant", "delete", "tenant-9", "-y", code=1)
    assert "tenant has VMs" in result.stderr


def test_delete_asks_for_confirmation(api: FakeApi, alto: Any) -> None:
    alto("tenant", "delete", "tenant-9", input="n\n", code=1)
    assert api.requests == []


# -- identity commands --------------------------------------------------------------


def test_tenant_commands(api: FakeApi, alto: Any) -> None:
    tenant = {"id": "tenant-2", "name": "acme", "status": "active", "contact_email": None}
    api.on("POST /v1/tenants", httpx.Response(201, json=tenant))
    api.on("GET /v1/tenants", httpx.Response(200, json={"items": [tenant], "next_cursor": None}))
    api.on("GET /v1/tenants/tenant-2", httpx.Response(200, json=tenant))
    api.on("POST /v1/tenants/tenant-2/actions/freeze", httpx.Response(200, json=tenant))
    api.on("POST /v1/tenants/tenant-2/actions/unfreeze", httpx.Response(200, json=tenant))
    api.on("DELETE /v1/tenants/tenant-2", httpx.Response(204))

    alto(
        "tenant",
        "create",
        "acme",
        "--owner-username",
        "boss",
        "--contact-email",
        "a@b.c",
        input="Owner-Pass-1\nOwner-Pass-1\n",
    )
    assert api.bodies("POST /v1/tenants") == [
        {
            "name": "acme",
            "owner": {"username": "boss", "password": "Owner-Pass-1"},
            "contact_email": "a@b.c",
        }
    ]
    assert "acme" in alto("tenant", "list").stdout
    assert out_json(alto("-o", "json", "tenant", "show", "tenant-2")) == tenant
    alto("tenant", "freeze", "tenant-2")
    alto("tenant", "unfreeze", "tenant-2")
    assert api.bodies("POST /v1/tenants/tenant-2/actions/freeze") == [{}]
    assert "Deleted tenant-2" in alto("tenant", "delete", "tenant-2", "-y").stderr
    posts = [r for r in api.requests if r.method == "POST"]
    keys = {r.headers["idempotency-key"] for r in posts}
    assert len(keys) == len(posts) == 3


def test_user_commands(api: FakeApi, alto: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = {"id": "user-2", "username": "ann", "role": "member", "status": "active"}
    api.on("POST /v1/users", httpx.Response(201, json=user))
    api.on("GET /v1/users", httpx.Response(200, json={"items": [user], "next_cursor": None}))
    for verb in ("disable", "enable", "reset-password"):
        api.on(f"POST /v1/users/user-2/actions/{verb}", httpx.Response(200, json=user))
    api.on("POST /v1/users/me/actions/change-password", httpx.Response(204))
    api.on("DELETE /v1/users/user-2", httpx.Response(204))

    alto(
        "user",
        "create",
        "ann",
        "--role",
        "member",
        "--tenant-id",
        "tenant-2",
        input="Pass-word-1\nPass-word-1\n",
    )
    assert api.bodies("POST /v1/users") == [
        {"username": "ann", "password": "Pass-word-1", "role": "member", "tenant_id": "tenant-2"}
    ]
    alto("user", "list", "--tenant-id", "tenant-2")
    assert api.requests[-1].url.params["tenant_id"] == "tenant-2"
    alto("user", "disable", "user-2")
    alto("user", "enable", "user-2")
    monkeypatch.setenv("ALTO_NEW_PASSWORD", "New-Pass-2")
    alto("user", "reset-password", "user-2")
    assert api.bodies("POST /v1/users/user-2/actions/reset-password") == [
        {"password": "New-Pass-2"}
    ]
    monkeypatch.delenv("ALTO_NEW_PASSWORD")
    alto("user", "passwd", input="Old-1\nNew-3\nNew-3\n")
    assert api.bodies("POST /v1/users/me/actions/change-password") == [
        {"old_password": "Old-1", "new_password": "New-3"}
    ]
    alto("user", "delete", "user-2", "--yes")


def test_role_commands(api: FakeApi, alto: Any) -> None:
    role = {"id": "role-1", "name": "ops", "builtin": False, "permissions": ["vm.read"]}
    api.on("POST /v1/roles", httpx.Response(201, json=role))
    api.on("GET /v1/roles", httpx.Response(200, json={"items": [role], "next_cursor": None}))
    api.on("DELETE /v1/roles/role-1", httpx.Response(204))
    alto("role", "create", "ops", "-p", "vm.read", "-p", "vm.write", "--description", "d")
    assert api.bodies("POST /v1/roles") == [
        {"name": "ops", "permissions": ["vm.read", "vm.write"], "description": "d"}
    ]
    assert "vm.read" in alto("role", "list").stdout
    alto("role", "delete", "role-1", "-y")


def test_apikey_create_save_and_revoke(isolated: Path, api: FakeApi, alto: Any) -> None:
    created = {"id": "key-7", "secret": "S3CRET", "status": "active", "role": None}
    api.on("POST /v1/api-keys", httpx.Response(201, json=created))
    api.on("DELETE /v1/auth/tokens/current", httpx.Response(204))
    api.on("DELETE /v1/api-keys/key-7", httpx.Response(204))
    api.on("GET /v1/api-keys", httpx.Response(200, json={"items": [], "next_cursor": None}))

    result = alto("apikey", "create", "--description", "ci", "--role", "readonly")
    assert "S3CRET" in result.stdout and "not shown again" in result.stderr
    assert api.bodies("POST /v1/api-keys") == [{"description": "ci", "role": "readonly"}]
    assert "token" in read_profiles(isolated)["default"]

    alto("apikey", "create", "--save")
    creds = load_credentials()
    assert (creds.auth_kind, creds.access_key_id, creds.secret_access_key) == (
        "api-key",
        "key-7",
        "S3CRET",
    )
    assert any(r.url.path == "/v1/auth/tokens/current" for r in api.requests)
    assert stat.S_IMODE(isolated.stat().st_mode) == 0o600

    alto("apikey", "list")  # now signed with the saved key
    assert (
        api.requests[-1]
        .headers["authorization"]
        .startswith("ALTO1-HMAC-SHA256 Credential=key-7, Timestamp=")
    )
    alto("apikey", "revoke", "key-7", "-y")


def test_quota_commands(api: FakeApi, alto: Any) -> None:
    quotas = {
        "tenant_id": "tenant-2",
        "region": "r1",
        "quotas": {
            "vms": {"limit": 20, "usage": 3, "default": False},
            "vcpus": {"limit": -1, "usage": 0, "default": True},
        },
    }
    api.on("GET /v1/quotas", httpx.Response(200, json=quotas))
    api.on("PUT /v1/quotas/tenant-2", httpx.Response(200, json=quotas))
    table = alto("quota", "show", "--tenant-id", "tenant-2").stdout
    assert "unlimited" in table and "vms" in table
    assert api.requests[-1].url.params["tenant_id"] == "tenant-2"
    assert out_json(alto("-o", "json", "quota", "set", "tenant-2", "vms=20", "vcpus=-1")) == quotas
    assert api.bodies("PUT /v1/quotas/tenant-2") == [{"vms": 20, "vcpus": -1}]
    result = alto("quota", "set", "tenant-2", "novalue", code=2)
    assert "key=value" in result.output
