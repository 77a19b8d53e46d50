"""Self-enrollment challenges in storage, on SQLite and PostgreSQL: one-time, bound to the
principal that asked and to its nonce, expiring on an injected clock; of two concurrent answers
exactly one spends the challenge; identity and grant attestation; migration 0004 -> 0005 and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.challenges import ChallengeRefused, Challenges, nonce_digest
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.subjects import IdentityAttestation, Subjects
from consentry.gateway.storage.tables import Base, EnrollmentChallenge
from consentry.gateway.storage.vault import TemplateVault
from consentry.gateway.testing import ManualClock
from consentry.policies import codes
from consentry.provenance.audit_signing import AuditSigner
from tests.gateway.test_adapter_store import _alembic, _schema

POSES = ["left", "front", "right"]
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@dataclass
class World:
    db: Database
    audit: AuditLog
    clock: ManualClock
    challenges: Challenges
    subjects: Subjects

    async def row(self, challenge_id: str) -> EnrollmentChallenge:
        async with self.db.session() as session:
            row = await session.get(EnrollmentChallenge, challenge_id)
        assert row is not None
        return row

    async def kinds(self) -> list[str]:
        return [e.kind async for e in self.audit.events()]

    async def enroll(self, name: str, attested: IdentityAttestation | None = None, also: Any = None) -> str:
        emb = np.random.default_rng(len(name)).normal(size=(3, 16)).astype(np.float32)
        view = await self.subjects.enroll(name, emb, "test", "op", {}, (), attested, also)
        return view.id


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    db = Database(database_url)
    await db.migrate()
    audit = AuditLog(db, AuditSigner(Ed25519PrivateKey.generate()))
    clock = ManualClock(T0)
    yield World(db, audit, clock, Challenges(db, audit, clock), Subjects(db, TemplateVault(b"k" * 32), audit))
    await db.dispose()


async def refused(code: str, answer: Callable[[], Any]) -> None:
    with pytest.raises(ChallengeRefused) as err:
        await answer()
    assert err.value.code == code


async def test_a_challenge_is_open_only_to_its_principal_with_its_nonce(world: World) -> None:
    issued = await world.challenges.issue("prn_a", POSES, ttl_s=120)
    assert issued.expires_at == T0 + timedelta(seconds=120) and issued.poses == tuple(POSES)
    row = await world.row(issued.id)
    # Only the nonce's hash is stored; the audit event names the challenge but not the nonce.
    assert row.nonce_sha256 == nonce_digest(issued.nonce) and issued.nonce not in row.nonce_sha256
    [event] = [e async for e in world.audit.events()]
    assert event.kind == "enrollment.challenge_issued" and issued.nonce not in str(event.body)
    assert event.body["poses"] == POSES and event.body["actor"] == "prn_a"
    opened = await world.challenges.open(issued.id, issued.nonce, "prn_a")
    assert opened.poses == tuple(POSES)
    unknown = codes.LIVENESS_UNKNOWN_CHALLENGE
    await refused(unknown, lambda: world.challenges.open("chl_nope", issued.nonce, "prn_a"))
    await refused(unknown, lambda: world.challenges.open(issued.id, issued.nonce + "x", "prn_a"))
    await refused(unknown, lambda: world.challenges.open(issued.id, issued.nonce, "prn_b"))


async def test_a_challenge_expires_on_the_clock(world: World) -> None:
    issued = await world.challenges.issue("prn_a", POSES, ttl_s=120)
    world.clock.now = T0 + timedelta(seconds=119)
    await world.challenges.open(issued.id, issued.nonce, "prn_a")
    world.clock.now = T0 + timedelta(seconds=120)
    await refused(codes.LIVENESS_EXPIRED, lambda: world.challenges.open(issued.id, issued.nonce, "prn_a"))
    # Expiring between the check and the commit rolls the enrollment back.
    spend = world.challenges.spend_on_enrollment(issued.id, issued.nonce, "prn_a")
    await refused(codes.LIVENESS_EXPIRED, lambda: world.enroll("late", also=spend))
    assert await world.kinds() == ["enrollment.challenge_issued"]
    assert (await world.row(issued.id)).used_at is None


async def test_a_challenge_is_spent_once_by_the_enrollment_that_answers_it(world: World) -> None:
    issued = await world.challenges.issue("prn_a", POSES, ttl_s=120)
    attested = IdentityAttestation("self_attested_with_liveness", issued.id, "ab" * 32)
    spend = world.challenges.spend_on_enrollment(issued.id, issued.nonce, "prn_a")
    identity = await world.enroll("alice", attested, spend)
    row = await world.row(issued.id)
    assert (row.identity_id, row.refused_code, row.used_at is not None) == (identity, None, True)
    assert await world.subjects.attestation_of(identity) == attested
    await refused(codes.LIVENESS_REPLAYED, lambda: world.challenges.open(issued.id, issued.nonce, "prn_a"))
    again = world.challenges.spend_on_enrollment(issued.id, issued.nonce, "prn_a")
    await refused(codes.LIVENESS_REPLAYED, lambda: world.enroll("alice-again", attested, again))
    assert await world.kinds() == ["enrollment.challenge_issued", "identity.enrolled"]


async def test_of_two_concurrent_answers_exactly_one_is_accepted(world: World) -> None:
    issued = await world.challenges.issue("prn_a", POSES, ttl_s=120)
    attested = IdentityAttestation("self_attested_with_liveness", issued.id, "cd" * 32)
    results = await asyncio.gather(
        *(
            world.enroll(
                f"twin-{i}", attested, world.challenges.spend_on_enrollment(issued.id, issued.nonce, "prn_a")
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, str)]
    replays = [r for r in results if isinstance(r, ChallengeRefused)]
    assert len(accepted) == 1 and len(replays) == 3, results
    assert all(r.code == codes.LIVENESS_REPLAYED for r in replays)
    assert (await world.row(issued.id)).identity_id == accepted[0]
    assert (await world.kinds()).count("identity.enrolled") == 1


async def test_a_refusal_spends_the_challenge_and_records_why(world: World) -> None:
    issued = await world.challenges.issue("prn_a", POSES, ttl_s=120)
    spend = world.challenges.spend_on_refusal(issued.id, codes.LIVENESS_POSE_MISMATCH)
    await world.audit.append("enrollment.liveness_refused", {"challenge_id": issued.id}, also=spend)
    row = await world.row(issued.id)
    assert (row.refused_code, row.identity_id, row.used_at is not None) == (
        codes.LIVENESS_POSE_MISMATCH,
        None,
        True,
    )
    await refused(codes.LIVENESS_REPLAYED, lambda: world.challenges.open(issued.id, issued.nonce, "prn_a"))


async def test_identities_and_grants_default_to_operator_attested(world: World) -> None:
    identity = await world.enroll("bob")
    assert await world.subjects.attestation_of(identity) == IdentityAttestation()
    async with world.db.session() as session, session.begin():
        await session.execute(
            text("INSERT INTO principals VALUES ('prn_g', 'g', 'requester', :t)"), {"t": T0}
        )
    grant = await world.subjects.grant(
        identity_id=identity,
        principal_id="prn_g",
        purposes=["portrait"],
        deny_terms=[],
        expires_at=None,
        max_uses=None,
        evidence={},
        actor="op",
    )
    assert grant.attestation == "operator_attested"


# -- migration 0004 -> 0005 and back ---------------------------------------------------------------


async def _rows(session: AsyncSession, statement: str) -> list[Any]:
    return list((await session.execute(text(statement))).all())


async def test_migration_0004_to_0005_and_back(database_url: str) -> None:
    db = Database(database_url)
    await _alembic(db, lambda c: command.upgrade(c, "0004"))
    async with db.session() as session, session.begin():
        for statement, params in [
            ("INSERT INTO principals VALUES ('prn_1', 'p', 'requester', :t)", {}),
            ("INSERT INTO identities VALUES ('idn_1', 'a', 'active', :k, :t, NULL)", {"k": b"key"}),
            (
                "INSERT INTO grants VALUES ('gnt_1', 'idn_1', 'prn_1', '[\"portrait\"]', '[]',"
                " NULL, NULL, 0, '{}', :t, NULL, false)",
                {},
            ),
        ]:
            await session.execute(text(statement), {"t": T0, **params})
    assert "enrollment_challenges" not in await _schema(db)
    await db.migrate()
    schema = await _schema(db)
    assert "enrollment_challenges" in schema
    assert {"attestation", "liveness_challenge_id", "evidence_sha256"} <= schema["identities"]
    assert "attestation" in schema["grants"]
    async with db.session() as session:
        # Rows made before 0005 read as operator-attested.
        assert await _rows(session, "SELECT attestation FROM identities") == [("operator_attested",)]
        assert await _rows(session, "SELECT attestation FROM grants") == [("operator_attested",)]

    def differences(connection: Connection) -> list[Any]:
        options = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(connection, opts=options), Base.metadata)

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []  # the migrations mirror tables.py exactly

    await _alembic(db, lambda c: command.downgrade(c, "0004"))
    schema = await _schema(db)
    assert "enrollment_challenges" not in schema
    assert "attestation" not in schema["identities"] | schema["grants"]
    async with db.session() as session:
        assert await _rows(session, "SELECT id FROM grants") == [("gnt_1",)]
    await db.migrate()
    assert "enrollment_challenges" in await _schema(db)
    await db.dispose()
