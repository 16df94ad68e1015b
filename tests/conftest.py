"""Shared fixtures. Every database test runs twice: on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from altostack.api.app import create_app
from altostack.bootstrap import Container, build
from altostack.db.database import Database
from altostack.db.migrate import upgrade
from altostack.settings import Settings
from tests.support.ceph import ceph_cluster  # noqa: F401 (session fixture: one Ceph cluster)
from tests.support.real import PostgresServer, start_postgres

ADMIN_PASSWORD = "Admin-Pass-1"
TEMPLATE_DB = "alto_template"
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        asyncio.run(_make_template(server))
        yield server
    finally:
        server.stop()


async def _make_template(server: PostgresServer) -> None:
    admin = create_async_engine(server.url(), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {TEMPLATE_DB}"))
    await admin.dispose()
    db = Database(server.url(TEMPLATE_DB))
    await upgrade(db)
    await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"

    async def make() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await upgrade(db)
        await db.dispose()

    asyncio.run(make())
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each kind (copied from a migrated template)."""
    yield from fresh_database(request, tmp_path)


def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The body of a ``db_url`` fixture: a database of the kind ``request.param`` names,
    copied from the migrated template, dropped afterwards."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "alto.db"
        shutil.copy(template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    admin: Callable[[str], None] = request.getfixturevalue("pg_admin")
    name = f"t{next(_counter)}_{abs(hash(request.node.nodeid)) % 10**8}"
    admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    try:
        yield server.url(name)
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_admin(pg_server: PostgresServer) -> Iterator[Callable[[str], None]]:
    """Runs an administrative statement (CREATE/DROP DATABASE) on one connection kept for
    the session: an engine per statement cost 0.1 s, twice per PostgreSQL test."""
    with asyncio.Runner() as runner:
        engine = create_async_engine(pg_server.url(), isolation_level="AUTOCOMMIT")
        conn = engine.connect()
        runner.run(conn.start())

        def execute(sql: str) -> None:
            runner.run(conn.execute(text(sql)))

        try:
            yield execute
        finally:
            runner.run(conn.close())
            runner.run(engine.dispose())


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "db": db_url,
        "bootstrap_admin_password": ADMIN_PASSWORD,
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 8,
        "operation_lease_seconds": 2.0,
        "worker_poll_seconds": 0.2,
        "shutdown_grace_seconds": 2.0,
        "log_format": "console",
        "driver": "sim",  # never real guests unless a test asks for them
        "network_driver": "sim",  # nor bridges, namespaces and nftables in the root namespace
        "sim_hosts": 0,
        "sim_timing_scale": 0.0,
        "heartbeat_interval_seconds": 0.2,
        "agent_timeout_seconds": 2.0,
    }
    values.update(overrides)
    values.setdefault("seed", values["sim_hosts"] > 0)
    return Settings(**values)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[Container]:
    c = build(settings, migrate=False)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(container, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as ac:
        yield ac


async def login(
    client: httpx.AsyncClient, username: str, password: str, tenant: str = "system"
) -> dict[str, str]:
    r = await client.post(
        "/v1/auth/tokens", json={"username": username, "password": password, "tenant": tenant}
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> dict[str, str]:
    """Authorization headers of the bootstrap platform administrator."""
    return await login(client, "admin", ADMIN_PASSWORD)
