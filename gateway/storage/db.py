"""Engine, sessions and migrations for SQLite (default) and PostgreSQL (by URL)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, CursorResult, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import Executable

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK = 0x6D696772  # "migr"
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


@cache
def head_revision(versions: Path = MIGRATIONS / "versions") -> str | None:
    """The one head of the migration scripts, read from their ``revision`` / ``down_revision``
    lines without importing Alembic (which costs ~0.2 s of every command's start); None when
    that is not plain (no scripts, a branch, a merge, a line we do not understand), and then
    :meth:`Database.migrate` always asks Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted(versions.glob("*.py")):
        text = script.read_text(encoding="utf-8")
        found: dict[str, str] = {m.group(1): m.group(2) for m in _REVISION.finditer(text)}
        rev, down = found.get("revision", ""), found.get("down_revision", "")
        if not re.fullmatch(r"[\"'][\w-]+[\"']", rev) or not re.fullmatch(r"None|[\"'][\w-]+[\"']", down):
            return None
        revisions.add(rev[1:-1])
        if down != "None":
            parents.add(down[1:-1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers continue while the gate appends; the busy timeout makes a second process
    # wait for the write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Deleted rows (erased templates) are overwritten with zeros, not left in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


async def affected_rows(session: AsyncSession, statement: Executable) -> int:
    """Run an UPDATE or DELETE and return how many rows it matched.

    ``AsyncSession.execute`` is typed as returning a plain ``Result``; for DML without RETURNING
    it is a ``CursorResult``, the type that has ``rowcount``.
    """
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount


class Database:
    """Owns the async engine. ``migrate()`` brings an empty or older database to head."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except SQLAlchemyError as exc:
            raise ConfigurationError(f"invalid database_url {url!r}", code=codes.CONFIG_DATABASE_URL) from exc
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def at_head(self) -> bool:
        """Whether the database already stands at the scripts' head revision: one cheap query,
        no Alembic. Any doubt (no version table yet, an error, an unknown or older revision)
        answers False and :meth:`migrate` lets Alembic decide."""
        head = head_revision()
        if head is None:
            return False
        try:
            async with self.engine.connect() as conn:
                versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
                return list(versions) == [head]
        except (OSError, SQLAlchemyError):
            return False

    async def migrate(self) -> None:
        """Bring the database to head. A database already there (every start but the first) is
        recognised by :meth:`at_head` and Alembic is neither imported nor run; otherwise Alembic
        upgrades under the same locks as always (PostgreSQL: an advisory lock, so processes
        starting together on an empty database migrate one at a time; Alembic re-reads the
        version inside it)."""
        if await self.at_head():
            return

        def upgrade(connection: Connection) -> None:
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        try:
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    # Several processes starting on one empty database migrate one at a time.
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                await conn.run_sync(upgrade)
        except (OSError, SQLAlchemyError) as exc:
            raise ConfigurationError(
                f"cannot open or migrate the database at {self.url}: {exc}", code=codes.STORAGE_UNAVAILABLE
            ) from exc

    async def dispose(self) -> None:
        await self.engine.dispose()
