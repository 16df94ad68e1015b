"""Real components for tests: a private PostgreSQL server, free ports, the REQUIRE_REAL rule.

``ALTO_REQUIRE_REAL=1`` (set by CI) turns "skip: component missing" into a failure, so a
green CI means the real thing really ran.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_REAL = os.environ.get("ALTO_REQUIRE_REAL") == "1"


def need_real(reason: str) -> None:
    """Skip for a missing real component, or fail when CI requires it."""
    if REQUIRE_REAL:
        pytest.fail(f"ALTO_REQUIRE_REAL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    user: str | None  # the unprivileged OS user the server runs as (None: ourselves)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://alto@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir / "data"), "-U", "alto",
                  "-A", "trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.datadir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-w", "-t", "30",
                  "-l", str(self.datadir / "server.log"), "-o", options, "start")  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir / "data"), "-m",
                      "immediate", "-w", "-t", "30", "stop")  # fmt: skip
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bindir = _pg_bindir()
    if bindir is None:
        need_real("PostgreSQL is not installed (scripts/install-system-deps installs it)")
        raise AssertionError("unreachable")
    user = None
    datadir = Path(tempfile.mkdtemp(prefix="alto-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            need_real("running as root and there is no 'postgres' user to run PostgreSQL")
            raise
        user = "postgres"
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        os.chmod(datadir, 0o700)
    server = PostgresServer(bindir, datadir, free_port(), user)
    started = time.monotonic()
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        server.stop()
        need_real(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    print(f"\nPostgreSQL ready in {time.monotonic() - started:.2f}s on port {server.port}")
    return server
