"""A real ``alto up`` in a subprocess, for tests that kill, stop and restart it.

Everything waits with a deadline, and :meth:`AltoServer.kill` is safe to call in any
state, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from tests.support.real import free_port

ROOT = Path(__file__).resolve().parents[2]
ALTO = Path(sys.executable).parent / "alto"
ADMIN_PASSWORD = "Admin-Pass-1"


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a test server: fast password hashing, short leases, and this
    checkout (not whatever is installed) first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTO_")}
    paths = [str(ROOT / "src"), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        ALTO_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ALTO_PASSWORD_HASH_TIME_COST="1",
        ALTO_PASSWORD_HASH_MEMORY_KIB="8",
        ALTO_OPERATION_LEASE_SECONDS="2",
        ALTO_WORKER_POLL_SECONDS="0.2",
        ALTO_DRIVER="sim",
        ALTO_NETWORK_DRIVER="sim",
        ALTO_SIM_HOSTS="0",
        ALTO_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


class AltoServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        db: str | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        """Where it listens: loopback, or an address of a test's own underlay bridge."""
        self.data_dir = data_dir
        self.db = db
        self.env = env or server_env()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same data and port) and wait until /readyz says so."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [str(ALTO), "up", "--host", self.host, "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        if self.db:
            cmd += ["--db", self.db]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(cmd)}\n".encode())
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"alto up exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"alto up was not ready within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); fails after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"alto up did not exit within {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the server (and anything it started) if it still runs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log(self, tail: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 10.0), **kwargs)

    def login(self) -> dict[str, str]:
        with self.client() as c:
            r = c.post(
                "/v1/auth/tokens",
                json={"username": "admin", "password": ADMIN_PASSWORD, "tenant": "system"},
            )
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}


@contextmanager
def alto_server(
    data_dir: Path, *, db: str | None = None, env: dict[str, str] | None = None
) -> Iterator[AltoServer]:
    """A started server that is killed, whatever happens, when the block ends."""
    server = AltoServer(data_dir, db=db, env=env)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first true value of ``predicate`` (polled), or an assertion naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def upload_image(http: httpx.Client, image_file: Path, name: str = "guest") -> dict[str, Any]:
    """An image made from ``image_file`` through the API (checksummed, ``available``)."""
    image = http.post("/v1/images", json={"name": name}).json()
    r = http.put(
        f"/v1/images/{image['id']}/file",
        content=image_file.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def join_token(http: httpx.Client) -> str:
    """A join token for the first cluster (one at a time: a new one replaces the last)."""
    cluster = http.get("/v1/clusters").json()["items"][0]
    return str(http.post(f"/v1/clusters/{cluster['id']}/actions/join-token").json()["join_token"])


def start_qemu_agent(
    server: AltoServer,
    join: str,
    hostname: str,
    state_dir: Path,
    log: Path,
    env: dict[str, str],
    *options: str,
) -> subprocess.Popen[bytes]:
    """``alto agent --driver qemu`` in a session of its own (kill it by its group), its
    output in ``log``; ``env`` carries ``ALTO_TOKEN`` and whatever else the host needs."""
    cmd = [str(ALTO), "agent", *options, "--join", server.url, "--token", join]
    cmd += ["--hostname", hostname, "--driver", "qemu", "--heartbeat", "1"]
    cmd += ["--state-dir", str(state_dir)]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
