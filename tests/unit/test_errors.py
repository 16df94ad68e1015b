"""Every error is RFC 9457 problem+json with the same shape, and never leaks internals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.settings import Settings
from tests.support.slow_ops import plain_tracebacks, plugin_settings

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "code", "errors"}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is a well-formed problem and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["errors"], list)
    for err in body["errors"]:
        assert set(err) == {"field", "message"} and err["field"] and err["message"]
    assert "x-request-id" in response.headers
    return body


async def test_validation_error_names_the_query_field(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    body = problem(
        await client.get("/v1/operations", params={"limit": 0}, headers=admin),
        422,
        "ValidationFailed",
    )
    assert body["errors"][0]["field"] == "limit"
    assert "limit" in body["detail"]
    assert body["instance"] == "/v1/operations"
    body = problem(
        await client.get("/v1/operations", params={"limit": 501}, headers=admin),
        422,
        "ValidationFailed",
    )
    assert body["errors"][0]["field"] == "limit"
    body = problem(
        await client.get("/v1/operations", params={"limit": "many"}, headers=admin),
        422,
        "ValidationFailed",
    )
    assert body["errors"][0]["field"] == "limit"


async def test_validation_error_names_the_body_fields(client: httpx.AsyncClient):
    r = await client.post("/v1/auth/tokens", json={"tenant": "system"})
    body = problem(r, 422, "ValidationFailed")
    assert {e["field"] for e in body["errors"]} == {"username", "password"}
    r = await client.post("/v1/auth/tokens", json={"username": "", "password": "x" * 500})
    body = problem(r, 422, "ValidationFailed")
    assert {e["field"] for e in body["errors"]} == {"username", "password"}


async def test_nested_body_field_is_named_with_its_path(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    r = await client.post("/v1/test/steps", json={"steps": "x", "step_seconds": -1}, headers=admin)
    body = problem(r, 422, "ValidationFailed")
    assert {e["field"] for e in body["errors"]} == {"steps", "step_seconds"}


async def test_malformed_body_is_a_problem_naming_the_body(client: httpx.AsyncClient):
    for content in (b'{"username": "admin", "password": ', b"not json", b"[1, 2]", b""):
        r = await client.post(
            "/v1/auth/tokens", content=content, headers={"Content-Type": "application/json"}
        )
        body = problem(r, 422, "ValidationFailed")
        assert body["errors"][0]["field"] == "body", content


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient, admin: dict[str, str]):
    body = problem(await client.get("/v1/nothing-here", headers=admin), 404, "NotFound")
    assert "/v1/nothing-here" in body["detail"]
    problem(await client.get("/nothing"), 404, "NotFound")
    problem(await client.post("/v1/nothing-here", json={}, headers=admin), 404, "NotFound")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.delete("/v1/operations", headers=admin)
    body = problem(r, 405, "MethodNotAllowed")
    assert "DELETE" in body["detail"]
    assert "GET" in r.headers["allow"]
    problem(await client.put("/healthz"), 405, "MethodNotAllowed")


async def test_missing_or_bad_credentials_are_401_problems(client: httpx.AsyncClient):
    r = await client.get("/v1/operations")
    body = problem(r, 401, "Unauthenticated")
    assert "Authorization" in body["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    problem(
        await client.get("/v1/operations", headers={"Authorization": "Bearer nope"}),
        401,
        "Unauthenticated",
    )
    problem(
        await client.get("/v1/operations", headers={"Authorization": "Basic YTpi"}),
        401,
        "Unauthenticated",
    )
    problem(await client.post("/v1/test/steps", json={}), 401, "Unauthenticated")
    body = problem(
        await client.post(
            "/v1/auth/tokens", json={"username": "admin", "password": "wrong-password"}
        ),
        401,
        "Unauthenticated",
    )
    assert "password" in body["detail"]


async def test_unexpected_exception_is_a_500_without_internals(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    for method in ("GET", "POST"):  # reads and mutations take different paths
        with plain_tracebacks():
            r = await client.request(method, "/v1/test/crash", headers=admin)
        body = problem(r, 500, "InternalError")
        assert "SECRET-CRASH-DETAIL" not in r.text
        assert "Traceback" not in r.text
        assert "RuntimeError" not in r.text
        assert body["instance"] == "/v1/test/crash"
    # The service keeps serving.
    assert (await client.get("/v1/operations", headers=admin)).status_code == 200


async def test_large_body_is_a_413_problem(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.post(
        "/v1/test/steps",
        content=b"x" * (8 * 1024 * 1024 + 10),
        headers={**admin, "Content-Type": "application/json"},
    )
    problem(r, 413, "PayloadTooLarge")


async def test_domain_error_extra_fields_are_kept(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.post("/v1/test/conflict", json={"steps": 1, "step_seconds": 0}, headers=admin)
    body = problem(r, 409, "Conflict")
    assert body["operation_id"].startswith("op-")


async def test_nul_characters_are_a_400_not_a_500(client: httpx.AsyncClient, admin: dict[str, str]):
    """PostgreSQL cannot store or compare text with NUL; found by the OpenAPI fuzz."""
    for path, params in (
        ("/v1/operations", {"resource_id": "a\x00b"}),
        ("/v1/operations", {"kind": "\x00"}),
        ("/v1/operations", {"cursor": "op-\x00"}),
        ("/v1/events", {"actor": "x\x00y"}),
        ("/v1/events", {"action": "\x00"}),
    ):
        r = await client.get(path, params=params, headers=admin)
        assert r.status_code in (200, 400), (path, params, r.text)
        if r.status_code == 400:
            body = problem(r, 400, "InvalidRequest")
            assert "NUL" in body["detail"]
    r = await client.get("/v1/operations/op-%00", headers=admin)
    assert r.status_code in (400, 404), r.text


async def test_a_value_refused_at_the_final_commit_is_a_400(
    request: pytest.FixtureRequest, client: httpx.AsyncClient, admin: dict[str, str]
):
    """The request's rows are written when the middleware commits, after the handler
    returned; a value the database refuses there must be a 400 as well, not a 500."""
    r = await client.post("/v1/test/notes", json={"note": "nul\x00here"}, headers=admin)
    assert r.status_code in (202, 400), r.text
    if r.status_code == 400:
        assert "NUL" in problem(r, 400, "InvalidRequest")["detail"]
