"""``audit verify`` detects every kind of tampering, on SQLite and PostgreSQL: an edited row, a
deleted row, two swapped rows, an inserted row, and a tail cut off after the last checkpoint."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.provenance.audit import GENESIS, seal
from consentry.provenance.audit_signing import AuditSigner

INSERT = "INSERT INTO audit_events (seq, ts, kind, body, prev_hash, hash) VALUES (:seq, :ts, :k, :b, :p, :h)"
EVENTS = 25  # checkpoints at 10 and 20; the tail 21..25 is after the last checkpoint


@pytest.fixture
async def log(database_url: str):
    db = Database(database_url)
    await db.migrate()
    audit = AuditLog(db, AuditSigner(Ed25519PrivateKey.generate()), checkpoint_every=10)
    for i in range(EVENTS):
        await audit.append("test.event", {"i": i, "principal_id": f"prn_{i % 3}"})
    assert (await audit.verify()).ok
    yield db, audit
    await db.dispose()


async def sql(db: Database, statement: str, **params: object) -> None:
    async with db.session() as session, session.begin():
        await session.execute(text(statement), params)


async def test_edited_row(log) -> None:
    db, audit = log
    await sql(db, "UPDATE audit_events SET kind = 'test.edited' WHERE seq = 7")
    report = await audit.verify()
    assert not report.ok and report.first_bad_seq == 7


async def test_deleted_row(log) -> None:
    db, audit = log
    await sql(db, "DELETE FROM audit_events WHERE seq = 12")
    report = await audit.verify()
    assert not report.ok and report.first_bad_seq == 13 and "gap" in report.problem


async def test_swapped_rows(log) -> None:
    db, audit = log
    await sql(db, "UPDATE audit_events SET seq = -1 WHERE seq = 4")
    await sql(db, "UPDATE audit_events SET seq = 4 WHERE seq = 5")
    await sql(db, "UPDATE audit_events SET seq = 5 WHERE seq = -1")
    report = await audit.verify()
    assert not report.ok and report.first_bad_seq == 4


async def test_inserted_row(log) -> None:
    db, audit = log
    # A forger renumbers the tail to make room and inserts a well-formed event at 15.
    for seq in range(EVENTS, 14, -1):
        await sql(db, "UPDATE audit_events SET seq = :new WHERE seq = :old", new=seq + 1, old=seq)
    fake = seal(seq=15, ts="2026-01-01T00:00:00+00:00", kind="test.event", body={"i": -1}, prev="0" * 64)
    await sql(
        db,
        INSERT.replace(":seq", "15"),
        ts=fake.ts,
        k=fake.kind,
        b='{"i": -1}',
        p=fake.prev_hash,
        h=fake.hash,
    )
    report = await audit.verify()
    assert not report.ok and report.first_bad_seq == 15


async def test_truncated_tail_after_last_checkpoint(log) -> None:
    db, audit = log
    await sql(db, "DELETE FROM audit_events WHERE seq > 22")
    report = await audit.verify()
    assert not report.ok and "tail" in report.problem and report.events == 22


async def test_forged_head_and_whole_rewrite(log) -> None:
    db, audit = log
    # Rewriting the whole chain consistently still fails: checkpoints and head are signed.
    await sql(db, "DELETE FROM audit_events")
    prev = GENESIS
    for seq in range(1, 6):
        event = seal(seq=seq, ts="2026-01-01T00:00:00+00:00", kind="forged", body={}, prev=prev)
        await sql(
            db,
            INSERT.replace(":b", "'{}'").replace(":seq", ":s"),
            s=seq,
            ts=event.ts,
            k=event.kind,
            p=event.prev_hash,
            h=event.hash,
        )
        prev = event.hash
    await sql(db, "UPDATE audit_head SET seq = 5, hash = :h", h=prev)
    report = await audit.verify()
    assert not report.ok
    assert report.problem in {"checkpoint does not match the log", "head signature invalid"}


async def test_other_key_does_not_verify(log) -> None:
    _, audit = log
    report = await audit.verify(Ed25519PrivateKey.generate().public_key())
    assert not report.ok and "signature" in report.problem
