"""``alto`` against a real server: ``alto up`` in a subprocess on a loopback port.

The server is started once for the module (a second or two) and stopped by its PID at
the end; each test logs in with its own credentials file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from altostack.cli.main import app
from altostack.cli.state import CliState
from altostack.client import Client, NotFound, load_credentials

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "Cli-Admin-Pass-1"
START_TIMEOUT = 20.0
SLOW_OPS = "tests.support.slow_ops"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_slow_ops() -> bool:
    try:
        return importlib.util.find_spec(SLOW_OPS) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("alto-cli-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTO_")}
    env.update(
        ALTO_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ALTO_PASSWORD_HASH_TIME_COST="1",
        ALTO_PASSWORD_HASH_MEMORY_KIB="8",
        ALTO_WORKER_POLL_SECONDS="0.2",
        ALTO_SHUTDOWN_GRACE_SECONDS="1",
        ALTO_LOG_FORMAT="json",
        ALTO_DRIVER="sim",  # as before the qemu default: one sim host, no real guests
    )
    if _has_slow_ops():
        env["ALTO_PLUGINS"] = json.dumps([SLOW_OPS])
    command = [sys.executable, "-m", "altostack.cli.main", "up", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(data)]
    url = f"http://127.0.0.1:{port}"
    with (data / "server.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, proc, data / "server.log")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"alto up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"alto up not healthy after {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def creds_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("ALTO_"):
            monkeypatch.delenv(name)
    path = tmp_path / "credentials"
    monkeypatch.setenv("ALTO_CREDENTIALS_FILE", str(path))
    return path


def alto(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args), obj=CliState())
    assert result.exit_code == code, (result.output, result.exception)
    return result


def login(url: str) -> None:
    alto("login", "--url", url, "--tenant", "system", "-u", "admin", "--password", ADMIN_PASSWORD)


def test_login_whoami_ops_and_events(server: str, creds_file: Path) -> None:
    login(server)
    assert load_credentials().token

    me = json.loads(alto("--output", "json", "whoami").stdout)
    assert (me["username"], me["tenant_name"], me["is_platform_admin"]) == ("admin", "system", True)
    assert "admin" in alto("whoami").stdout

    assert isinstance(json.loads(alto("ops", "list", "-o", "json").stdout), list)
    alto("ops", "list")

    logins = json.loads(alto("events", "--action", "auth.login", "-o", "json").stdout)
    assert logins and logins[0]["action"] == "auth.login"
    assert logins[0]["result"] == "success" and logins[0]["actor_name"] == "system/admin"
    assert "auth.login" in alto("events", "--limit", "5").stdout

    alto("logout")
    assert load_credentials().token is None
    alto("whoami", code=3)


def test_bad_password_is_refused_and_logged(server: str, creds_file: Path) -> None:
    result = alto("login", "--url", server, "-u", "admin", "--password", "wrong-1", code=1)
    assert "401" in result.stderr
    login(server)
    failures = json.loads(
        alto("-o", "json", "events", "--action", "auth.login", "--result", "failure").stdout
    )
    assert failures and failures[0]["result"] == "failure"


def test_unknown_operation_is_not_found(server: str, creds_file: Path) -> None:
    login(server)
    result = alto("ops", "show", "op-doesnotexist", code=1)
    assert "404 NotFound" in result.stderr


@pytest.mark.skipif(not _has_slow_ops(), reason=f"{SLOW_OPS} (test operation kind) is absent")
def test_ops_wait_follows_a_real_operation(server: str, creds_file: Path) -> None:
    login(server)
    with Client() as client:
        started = client.post("/v1/test/steps", {"steps": 3, "step_seconds": 0.1})
        failing = client.post(
            "/v1/test/steps",
            {"steps": 2, "step_seconds": 0.0, "fail_at": 1, "fail_mode": "permanent"},
        )
    op = json.loads(
        alto("-o", "json", "ops", "wait", started["operation"]["id"], "--timeout", "15").stdout
    )
    assert (op["state"], op["progress"]) == ("succeeded", 100)
    result = alto("ops", "wait", failing["operation"]["id"], "--timeout", "15", code=1)
    assert "failed for good" in result.stderr


def test_api_key_signs_requests_the_server_accepts(server: str, creds_file: Path) -> None:
    login(server)
    with Client() as client:
        try:
            client.get("/v1/api-keys")
        except NotFound:
            pytest.skip("the server has no /v1/api-keys route yet")
    created = json.loads(
        alto("-o", "json", "apikey", "create", "--description", "cli", "--save").stdout
    )
    creds = load_credentials()
    assert (creds.auth_kind, creds.access_key_id) == ("api-key", created["id"])
    me = json.loads(alto("-o", "json", "whoami").stdout)  # a signed GET
    assert me["username"] == "admin"
    events = json.loads(
        alto("-o", "json", "events", "--action", "auth.login", "--limit", "3").stdout
    )
    assert events  # a signed GET with a query string
    alto("apikey", "revoke", created["id"], "--yes")  # a signed DELETE, then the key is dead
    alto("whoami", code=1)
