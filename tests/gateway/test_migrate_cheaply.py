"""A database already at head is recognised with one query and Alembic stays unimported (it costs
every CLI command ~0.2 s); one behind head is still migrated, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from consentry.gateway.storage.db import MIGRATIONS, Database, head_revision
from consentry.gateway.storage.tables import Base


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def test_head_is_alembics_head() -> None:
    assert head_revision() == ScriptDirectory.from_config(_config()).get_current_head()


@pytest.mark.parametrize(
    ("scripts", "head"),
    [
        (
            {
                "a.py": 'revision = "a1"\ndown_revision = None\n',
                "b.py": "revision = 'b2'\ndown_revision = 'a1'\n",
            },
            "b2",
        ),
        ({"a.py": 'revision: str = "a1"\ndown_revision: str | None = None\n'}, "a1"),
        # Anything but one plain chain: Alembic decides.
        (
            {
                "a.py": 'revision = "a1"\ndown_revision = None\n',
                "b.py": 'revision = "b"\ndown_revision = None\n',
            },
            None,
        ),
        ({"m.py": 'revision = "m"\ndown_revision = ("a", "b")\n'}, None),
        ({"x.py": 'revision = "x"\ndown_revision = "gone"\n'}, None),
        ({"helper.py": "VALUE = 1\n"}, None),
        ({}, None),
    ],
)
def test_head_is_read_only_from_a_plain_chain(
    tmp_path: Path, scripts: dict[str, str], head: str | None
) -> None:
    for name, body in scripts.items():
        (tmp_path / name).write_text(body)
    assert head_revision(tmp_path) == head


async def test_a_database_behind_head_is_migrated(database_url: str) -> None:
    head = head_revision()
    assert head is not None
    previous = ScriptDirectory.from_config(_config()).get_revision(head).down_revision
    assert isinstance(previous, str)
    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_config(c), previous))
        assert not await db.at_head()
        await db.migrate()
        assert await db.at_head()
        async with db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert version == head_revision()
        assert set(Base.metadata.tables) <= tables
    finally:
        await db.dispose()


async def test_a_database_at_head_never_imports_alembic(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    assert not await db.at_head()  # empty
    await db.migrate()
    await db.dispose()
    probe = textwrap.dedent(
        f"""
        import asyncio, sys
        from consentry.gateway.storage.db import Database
        async def main():
            db = Database({database_url!r})
            await db.migrate()
            await db.dispose()
        asyncio.run(main())
        print(sorted(m for m in ("alembic", "litestar") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
