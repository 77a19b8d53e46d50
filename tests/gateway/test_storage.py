"""Storage against both SQLite and PostgreSQL: migrations, keys, templates, grants, audit chain."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import MIGRATIONS, Database
from consentry.gateway.storage.principals import Principals
from consentry.gateway.storage.subjects import Subjects
from consentry.gateway.storage.vault import TemplateVault
from consentry.policies.errors import AuthError, ConflictError, NotFoundError
from consentry.provenance.audit_signing import AuditSigner


@pytest.fixture
async def stores(database_url: str, tmp_path: Path):
    db = Database(database_url)
    await db.migrate()
    audit = AuditLog(db, AuditSigner(Ed25519PrivateKey.generate()), checkpoint_every=10)
    vault = TemplateVault(b"k" * 32)
    yield db, Principals(db, audit), Subjects(db, vault, audit), audit
    await db.dispose()


async def test_migrate_twice_is_idempotent(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate()
    await db.migrate()
    async with db.session() as session:
        version = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    await db.dispose()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert version == ScriptDirectory.from_config(config).get_current_head()


async def test_keys_hashed_and_revocable(stores) -> None:
    db, principals, _, _ = stores
    issued = await principals.create("studio", "requester")
    assert (await principals.authenticate(issued.secret)).id == issued.principal.id
    async with db.session() as session:
        stored = (await session.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
    assert issued.secret not in stored and len(stored[0]) == 64
    await principals.revoke_key(issued.key_id)
    with pytest.raises(AuthError):
        await principals.authenticate(issued.secret)
    with pytest.raises(ConflictError):
        await principals.create("studio", "requester")


async def test_templates_encrypted_and_grants_evaluated(stores) -> None:
    db, principals, subjects, audit = stores
    p = (await principals.create("p", "requester")).principal
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 128)).astype(np.float32)
    identity = await subjects.enroll("alice", emb, "test-embedder", actor="op", details={})
    got = await subjects.templates("test-embedder")
    assert got.identity_ids == (identity.id,) * 3
    np.testing.assert_array_equal(got.matrix, emb)
    async with db.session() as session:
        blobs = (await session.execute(text("SELECT ciphertext FROM templates"))).scalars().all()
    assert all(emb[i].tobytes() not in bytes(b) for i in range(3) for b in blobs)

    grant = await subjects.grant(
        identity_id=identity.id,
        principal_id=p.id,
        purposes=["portrait"],
        deny_terms=[],
        expires_at=datetime.now(UTC) + timedelta(days=1),
        max_uses=1,
        evidence={"attested_by": "op"},
        actor="op",
    )
    [terms] = await subjects.grants_for(identity.id, p.id)
    assert terms.id == grant.id and terms.problem(datetime.now(UTC)) is None
    async with db.session() as session, session.begin():
        assert await Subjects.consume(session, grant.id)
    async with db.session() as session, session.begin():
        assert not await Subjects.consume(session, grant.id)  # max_uses=1 reached
    await subjects.revoke(grant.id, actor="op")
    with pytest.raises(NotFoundError):
        await subjects.revoke(grant.id, actor="op")
    report = await audit.verify()
    # principal created, enrolled, granted, revoked (the failed revoke rolled back)
    assert report.ok and report.events == 4


async def test_concurrent_appends_are_gap_free(stores) -> None:
    db, _, _, audit = stores
    await asyncio.gather(*(audit.append("test", {"i": i}) for i in range(25)))
    report = await audit.verify()
    assert report.ok and report.events == 25
    async with db.session() as session, session.begin():
        await session.execute(text("UPDATE audit_events SET kind = 'edited' WHERE seq = 7"))
    report = await audit.verify()
    assert not report.ok and report.first_bad_seq == 7
