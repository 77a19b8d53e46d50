"""Shared fixtures: where the real test photos live.

The photos are never copied into the repository: they are read from ``../shared/faces`` beside
the checkout, or from ``$CONSENTRY_FACES_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FACES_DIR = Path(os.environ.get("CONSENTRY_FACES_DIR", REPO_ROOT.parent / "shared" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES_DIR / "manifest.csv").is_file():
        pytest.fail(f"test photos not found at {FACES_DIR}; set CONSENTRY_FACES_DIR")
    return FACES_DIR


PG_ADMIN_URL = os.environ.get("CONSENTRY_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh, empty database URL: a SQLite file, or a throw-away PostgreSQL database.

    PostgreSQL is part of the contract (CI starts it); an unreachable server fails the test
    rather than skipping it, so storage is never silently tested on one backend only.
    """
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'consentry.db'}"
        return
    import secrets

    import asyncpg

    name = f"consentry_t_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc}); start it or set CONSENTRY_TEST_PG_URL"
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
