"""Engine, sessions and migrations for SQLite (default) and PostgreSQL (by URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
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

    async def migrate(self) -> None:
        def upgrade(connection: Connection) -> None:
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
