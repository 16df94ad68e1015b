"""The SDK against mocked transports: signing, credentials, errors, paging, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.client import (
    AsyncClient,
    Client,
    ConfigurationError,
    Credentials,
    NotFound,
    OperationFailed,
    RetryPolicy,
    ServerError,
    TransportFailure,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
    load_credentials,
    path_of,
    signing,
    update_profile,
)
from altostack.client.credentials import credentials_path, read_profiles

URL = "http://alto.test"
FAST = RetryPolicy(attempts=3, backoff=0.0)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ALTO_* variable or credentials file of the developer leaks into a test."""
    for name in list(os.environ):
        if name.startswith("ALTO_"):
            monkeypatch.delenv(name)
    path = tmp_path / "credentials"
    monkeypatch.setenv("ALTO_CREDENTIALS_FILE", str(path))
    return path


def make_client(handler: Handler, **kwargs: Any) -> Client:
    kwargs.setdefault("token", "tok")
    kwargs.setdefault("retry", FAST)
    return Client(URL, transport=httpx.MockTransport(handler), sleep=lambda _s: None, **kwargs)


def problem(status: int, code: str, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": f"x/{code}", "title": code, "status": status, "detail": detail}
    body.update({"code": code, "errors": [], "instance": "/v1/x", **extra})
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", "x-request-id": "req-1"},
    )


# -- signing ------------------------------------------------------------------------


def test_signing_known_vector() -> None:
    body = b'{"name":"web-1"}'
    body_sha = hashlib.sha256(body).hexdigest()
    expected_text = "ALTO1-HMAC-SHA256\n1700000000\nPOST\n/v1/vms\na=1&b=x%20y\n" + body_sha
    assert body_sha == "c170d260c5801ebdc0dc96b0bce790fa3fb88bc151f3d6efc215e57fd008eff0"
    text = signing.string_to_sign(
        1700000000, "post", "/v1/vms", signing.canonical_query_string("b=x+y&a=1"), body_sha
    )
    assert text == expected_text
    by_hand = hmac.new(b"secret-123", expected_text.encode(), hashlib.sha256).hexdigest()
    # Also checked with: printf '…' | openssl dgst -sha256 -hmac secret-123
    assert by_hand == "3570e9225679d27ea5a56e40b629c143deb2982024ae7d1841ce3fe3859479eb"
    assert signing.sign("secret-123", text) == by_hand
    header = signing.authorization_header(
        "key-abc",
        "secret-123",
        timestamp=1700000000,
        method="POST",
        path="/v1/vms",
        query="b=x+y&a=1",
        body=body,
    )
    assert header == (
        f"ALTO1-HMAC-SHA256 Credential=key-abc, Timestamp=1700000000, Signature={by_hand}"
    )


def test_empty_body_hash() -> None:
    assert signing.body_hash(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signing.body_hash(b"") == signing.EMPTY_BODY_HASH


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("b=2&a=1", "a=1&b=2"),
        ("a=2&a=1&a=10", "a=1&a=10&a=2"),  # repeated keys kept, sorted as strings
        ("q=h%C3%A9llo+w%C3%B6rld", "q=h%C3%A9llo%20w%C3%B6rld"),  # UTF-8, space as %20
        ("x=a%2Fb&y=~_.-&z=%2a", "x=a%2Fb&y=~_.-&z=%2A"),  # / escaped, unreserved kept
        ("flag&empty=", "empty=&flag="),  # a key without '=' has an empty value
        ("p=1%2B1", "p=1%2B1"),  # a literal plus stays distinct from a space
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert signing.canonical_query_string(raw) == canonical


def test_canonical_query_from_pairs_with_unicode_keys() -> None:
    assert signing.canonical_query([("ñ", "ü"), ("a", "")]) == "%C3%B1=%C3%BC&a="


def test_parse_and_verify() -> None:
    header = signing.authorization_header(
        "key-1", "s3cret", timestamp=1000, method="GET", path="/v1/vms", query="limit=5"
    )
    signed = signing.parse_authorization(header)
    assert (signed.key_id, signed.timestamp) == ("key-1", 1000)
    args: dict[str, Any] = {"method": "GET", "path": "/v1/vms", "query": b"limit=5", "body": b""}
    signing.verify("s3cret", signed, now=1100, **args)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify("other", signed, now=1100, **args)
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify("s3cret", signed, now=1100, **{**args, "query": b"limit=6"})
    with pytest.raises(signing.SignatureError, match="behind the server clock"):
        signing.verify("s3cret", signed, now=1000 + 301, **args)
    with pytest.raises(signing.SignatureError, match="malformed"):
        signing.parse_authorization("ALTO1-HMAC-SHA256 Credential=k, Signature=ab")


def test_api_key_signs_what_goes_on_the_wire() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        signed = signing.parse_authorization(request.headers["authorization"])
        signing.verify(
            "sec",
            signed,
            method=request.method,
            path=request.url.raw_path.split(b"?")[0].decode(),
            query=request.url.query,
            body=request.content,
            now=signed.timestamp,
        )
        return httpx.Response(201, json={"ok": True})

    client = make_client(handler, token=None, access_key_id="key-9", secret_access_key="sec")
    assert client.auth_kind == "api-key"
    client.post("/v1/vms", {"name": "wéb"}, params={"dry_run": True, "tag": ["b", "a"]})
    client.get("/v1/events", {"actor": "system/admin", "limit": 5})
    assert len(seen) == 2
    assert "Credential=key-9" in seen[0].headers["authorization"]


# -- credentials --------------------------------------------------------------------


def test_credentials_precedence(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update_profile(None, url="http://file", tenant="filetenant", token="file-token")
    creds = load_credentials()
    assert (creds.url, creds.token, creds.tenant, creds.source) == (
        "http://file",
        "file-token",
        "filetenant",
        "file",
    )
    monkeypatch.setenv("ALTO_URL", "http://env")
    monkeypatch.setenv("ALTO_ACCESS_KEY_ID", "key-env")
    monkeypatch.setenv("ALTO_SECRET_ACCESS_KEY", "sec-env")
    creds = load_credentials()
    # Auth comes whole from the environment: the file's token is not mixed in.
    assert (creds.url, creds.auth_kind, creds.token, creds.access_key_id) == (
        "http://env",
        "api-key",
        None,
        "key-env",
    )
    assert creds.tenant == "filetenant"  # fields without auth still fall through
    creds = load_credentials("http://arg", token="arg-token")
    assert (creds.url, creds.token, creds.access_key_id, creds.source) == (
        "http://arg",
        "arg-token",
        None,
        "arguments",
    )
    assert "arg-token" not in repr(creds)


def test_credentials_profiles_and_paths(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    update_profile("lab", url="http://lab", token="t-lab")
    update_profile(None, url="http://default")
    assert load_credentials().url == "http://default"
    assert load_credentials(profile="lab").token == "t-lab"
    monkeypatch.setenv("ALTO_PROFILE", "lab")
    assert load_credentials().url == "http://lab"
    assert stat.S_IMODE(isolated_env.stat().st_mode) == 0o600
    assert set(read_profiles(isolated_env)) == {"lab", "default"}
    with pytest.raises(ConfigurationError, match="invalid profile"):
        load_credentials(profile="../etc")

    monkeypatch.delenv("ALTO_CREDENTIALS_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert credentials_path() == tmp_path / "xdg" / "altostack" / "credentials"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert credentials_path() == Path.home() / ".config" / "altostack" / "credentials"


def test_token_beats_key_in_one_profile_and_removal(isolated_env: Path) -> None:
    update_profile(None, url="http://u", access_key_id="key-1", secret_access_key="s")
    update_profile(None, token="t")
    assert load_credentials().auth_kind == "token"
    update_profile(None, token=None)
    creds = load_credentials()
    assert (creds.auth_kind, creds.access_key_id) == ("api-key", "key-1")
    text = isolated_env.read_text()
    assert "token" not in text and 'secret_access_key = "s"' in text


def test_key_without_secret_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALTO_ACCESS_KEY_ID", "key-1")
    with pytest.raises(ConfigurationError, match="without its secret"):
        load_credentials("http://x")


def test_client_needs_an_url() -> None:
    with pytest.raises(ConfigurationError, match="no API URL"):
        Client()


# -- errors -------------------------------------------------------------------------


def test_problem_becomes_typed_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/vms/vm-1":
            return problem(404, "NotFound", "no vm 'vm-1'")
        return problem(
            422,
            "ValidationFailed",
            "name: too short",
            errors=[{"field": "name", "message": "too short"}, {"field": "cidr", "message": "bad"}],
        )

    client = make_client(handler)
    with pytest.raises(NotFound) as found:
        client.get("/v1/vms/vm-1")
    err = found.value
    assert (err.status, err.code, err.detail, err.request_id) == (
        404,
        "NotFound",
        "no vm 'vm-1'",
        "req-1",
    )
    assert err.body["instance"] == "/v1/x" and json.loads(err.raw)["status"] == 404
    with pytest.raises(ValidationFailed) as invalid:
        client.post("/v1/vms", {"name": ""})
    assert [(e.field, e.message) for e in invalid.value.errors] == [
        ("name", "too short"),
        ("cidr", "bad"),
    ]
    assert "cidr: bad" in str(invalid.value)
    assert "name: too short (cidr" in str(invalid.value)


def test_non_json_error_and_server_error() -> None:
    client = make_client(lambda _r: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ServerError) as exc:
        client.get("/v1/x")
    assert exc.value.status == 502 and "bad gateway" in exc.value.detail


def test_path_of_escapes_segments() -> None:
    assert path_of("/v1/vms", "vm-1", "actions", "stop") == "/v1/vms/vm-1/actions/stop"
    assert path_of("/v1/vms/", "a/b?c") == "/v1/vms/a%2Fb%3Fc"


# -- pagination ---------------------------------------------------------------------


def paged(total: int, calls: list[httpx.Request]) -> Handler:
    items = [{"id": f"op-{i}"} for i in range(total)]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        limit = int(request.url.params["limit"])
        start = int(request.url.params.get("cursor", "0"))
        end = start + limit
        cursor = str(end) if end < total else None
        return httpx.Response(200, json={"items": items[start:end], "next_cursor": cursor})

    return handler


def test_list_all_follows_cursors() -> None:
    calls: list[httpx.Request] = []
    client = make_client(paged(7, calls))
    got = list(client.list_all("/v1/operations", page_size=3, state="running", kind=None))
    assert [i["id"] for i in got] == [f"op-{i}" for i in range(7)]
    assert [c.url.params.get("cursor") for c in calls] == [None, "3", "6"]
    assert all(c.url.params["state"] == "running" for c in calls)
    assert all("kind" not in c.url.params for c in calls)


def test_list_all_stops_at_max_items() -> None:
    calls: list[httpx.Request] = []
    client = make_client(paged(1000, calls))
    got = list(client.events(max_items=5, page_size=100))
    assert len(got) == 5 and len(calls) == 1 and calls[0].url.params["limit"] == "5"


# -- idempotency and retries --------------------------------------------------------


def test_post_retries_keep_the_idempotency_key() -> None:
    seen: list[httpx.Request] = []
    answers: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
        lambda _r: problem(503, "Unavailable", "db restarting"),
        lambda _r: httpx.Response(201, json={"id": "vm-1"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1](request)

    client = make_client(handler)
    assert client.post("/v1/vms", {"name": "a"}) == {"id": "vm-1"}
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1
    assert seen[0].content == seen[2].content

    seen.clear()
    answers[:] = [lambda _r: httpx.Response(201, json={"id": "vm-2"})] * 2
    client.post("/v1/vms", {"name": "a"})
    client.post("/v1/vms", {"name": "a"}, idempotency_key="mine")
    assert seen[0].headers["idempotency-key"] != keys.pop()
    assert seen[1].headers["idempotency-key"] == "mine"


def test_get_has_no_idempotency_key_and_retries_are_bounded() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return problem(503, "Unavailable", "down")

    client = make_client(handler)
    with pytest.raises(Unavailable):
        client.get("/v1/operations")
    assert len(seen) == 3 and "idempotency-key" not in seen[0].headers

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(TransportFailure) as exc:
        make_client(refuse).get("/healthz")
    assert exc.value.attempts == 3


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(attempts=4, backoff=1.0, max_backoff=3.0)
    req = httpx.Request("GET", URL)
    assert 0.5 <= (policy.after_error(0, httpx.ConnectError("x")) or 0) <= 1.0
    assert 1.5 <= (policy.after_error(2, httpx.ReadTimeout("x")) or 0) <= 3.0
    assert policy.after_error(3, httpx.ConnectError("x")) is None
    busy = httpx.Response(503, headers={"retry-after": "2"}, request=req)
    assert policy.after_response(0, busy) == 2.0
    assert policy.after_response(0, httpx.Response(500, request=req)) is None


# -- sessions and operations --------------------------------------------------------


def test_login_then_logout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/auth/tokens":
            return httpx.Response(201, json={"token": "new", "expires_at": "x", "user": {}})
        return httpx.Response(204)

    client = make_client(handler, token=None)
    client.login("acme", "bob", "pw")
    assert "authorization" not in seen[0].headers
    assert json.loads(seen[0].content) == {"tenant": "acme", "username": "bob", "password": "pw"}
    assert client.token == "new"
    client.logout()
    assert seen[1].method == "DELETE" and seen[1].headers["authorization"] == "Bearer new"
    assert client.token is None


def op_handler(states: list[tuple[str, int]], seen: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        state, progress = states[min(len(seen) - 1, len(states) - 1)]
        error = {"code": "Boom", "message": "disk full"} if state == "failed" else None
        body = {"id": "op-1", "kind": "vm.create", "state": state, "progress": progress}
        return httpx.Response(200, json={**body, "error": error})

    return handler


def test_wait_operation_reports_progress() -> None:
    seen: list[httpx.Request] = []
    states = [("pending", 0), ("running", 40), ("running", 40), ("succeeded", 100)]
    reports: list[tuple[str, int]] = []
    client = make_client(op_handler(states, seen))
    op = client.wait_operation(
        "op-1", timeout=60, on_progress=lambda o: reports.append((o["state"], o["progress"]))
    )
    assert op["state"] == "succeeded"
    assert reports == [("pending", 0), ("running", 40), ("succeeded", 100)]
    assert all(float(r.url.params["wait"]) <= 1 for r in seen)


def test_wait_operation_failure_and_timeout() -> None:
    seen: list[httpx.Request] = []
    client = make_client(op_handler([("failed", 30)], seen))
    assert client.wait_operation("op-1")["error"]["message"] == "disk full"
    with pytest.raises(OperationFailed, match="disk full"):
        client.wait_operation("op-1", raise_on_failure=True)
    client = make_client(op_handler([("running", 10)], seen))
    with pytest.raises(WaitTimeout) as exc:
        client.wait_operation("op-1", timeout=0)
    assert exc.value.operation["progress"] == 10


# -- async twin ---------------------------------------------------------------------


async def test_async_client_pages_and_retries() -> None:
    calls: list[httpx.Request] = []
    sync_handler = paged(5, calls)
    flaky = {"left": 1}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            calls.append(request)
            if flaky["left"]:
                flaky["left"] -= 1
                raise httpx.ReadTimeout("slow", request=request)
            return httpx.Response(202, json={"operation": {"id": "op-1"}})
        return sync_handler(request)

    async def no_sleep(_s: float) -> None:
        return None

    async with AsyncClient(
        credentials=Credentials(url=URL, token="t"),
        transport=httpx.MockTransport(handler),
        retry=FAST,
        sleep=no_sleep,
    ) as client:
        items = [i async for i in client.list_all("/v1/operations", page_size=2)]
        assert len(items) == 5
        assert await client.post("/v1/vpcs", {"name": "v"}) == {"operation": {"id": "op-1"}}
    posts = [c for c in calls if c.method == "POST"]
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert posts[0].headers["authorization"] == "Bearer t"


async def test_async_client_signs_and_waits() -> None:
    seen: list[httpx.Request] = []
    answers = [("running", 50), ("succeeded", 100)]

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        signed = signing.parse_authorization(request.headers["authorization"])
        signing.verify(
            "sec",
            signed,
            method=request.method,
            path=request.url.raw_path.split(b"?")[0].decode(),
            query=request.url.query,
            body=request.content,
            now=signed.timestamp,
        )
        state, progress = answers[min(len(seen) - 1, 1)]
        return httpx.Response(200, json={"id": "op-1", "state": state, "progress": progress})

    reports: list[int] = []
    client = AsyncClient(
        URL, access_key_id="key-1", secret_access_key="sec", transport=httpx.MockTransport(handler)
    )
    op = await client.wait_operation("op-1", 10, lambda o: reports.append(o["progress"]))
    await client.aclose()
    assert op["state"] == "succeeded" and reports == [50, 100]
