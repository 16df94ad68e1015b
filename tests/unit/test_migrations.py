"""Alembic owns the schema: ``upgrade head`` must build exactly what the models describe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from altostack.db.database import Database
from altostack.db.migrate import alembic_config, upgrade
from altostack.db.models import Base


def _diffs(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": False},
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def _emptied(db: Database) -> None:
    """Take the database back to no schema at all (alembic downgrade base)."""

    def down(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")

    async with db.engine.begin() as conn:
        await conn.run_sync(down)


async def test_upgrade_head_matches_the_models(db_url: str):
    db = Database(db_url)
    try:
        await _emptied(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        await upgrade(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
            diffs = await conn.run_sync(_diffs)
            head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert diffs == [], "models and migrations disagree:\n" + "\n".join(map(str, diffs))
        assert head == ScriptDirectory.from_config(alembic_config()).get_current_head()
        # Running it again is a no-op.
        await upgrade(db)
    finally:
        await db.dispose()


def test_migrations_form_one_line():
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "more than one head: merge the branches"
    assert len(script.get_bases()) == 1
    for revision in script.walk_revisions():
        assert revision.doc, f"revision {revision.revision} has no description"


@pytest.mark.parametrize("kind", ["sqlite"])
def test_upgrade_a_brand_new_file(tmp_path: Path, kind: str):
    """The embedded default starts from a file that does not exist yet."""

    async def run() -> tuple[set[str], list[Any]]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'alto.db'}")
        try:
            await upgrade(db)
            async with db.engine.connect() as conn:
                return await conn.run_sync(_tables), await conn.run_sync(_diffs)
        finally:
            await db.dispose()

    tables, diffs = asyncio.run(run())
    assert tables == set(Base.metadata.tables)
    assert diffs == []
