"""Migration 0006: the console's sessions table, the indexed copies of audit body fields and the
``audit_counts`` rollup, backfilled for events written before it (without changing any event's
hash), the rollup's trigger counting what comes after, and back."""

from __future__ import annotations

import json
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from consentry.gateway.storage.audit_index import indexed_columns
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import Base
from consentry.provenance.audit import GENESIS, ChainedEvent, seal, verify_chain
from tests.gateway.test_adapter_store import _alembic, _schema

BODIES: list[tuple[str, dict[str, Any]]] = [
    ("generation.refused", {"principal_id": "prn_1", "identity_id": "idn_1", "decision": "consent.revoked"}),
    ("grant.revoked", {"grant_id": "gnt_1", "actor": "prn_admin", "adapters_deleted": 0}),
    ("generation.released", {"principal_id": "prn_2", "identity_id": None, "decision": "released"}),
    ("odd", {"principal_id": 7, "decision": ["not", "a", "string"], "actor": "x" * 80}),
]


async def test_migration_0004_to_0006_backfills_and_back(database_url: str) -> None:
    db = Database(database_url)
    await _alembic(db, lambda c: command.upgrade(c, "0004"))
    prev, events = GENESIS, []
    for seq, (kind, body) in enumerate(BODIES, start=1):
        event = seal(seq=seq, ts=f"2025-01-0{seq}T00:00:00.000000+00:00", kind=kind, body=body, prev=prev)
        events.append(event)
        prev = event.hash
    async with db.session() as session, session.begin():
        for e in events:
            await session.execute(
                text("INSERT INTO audit_events VALUES (:seq, :ts, :kind, :body, :prev, :hash)"),
                {
                    "seq": e.seq,
                    "ts": e.ts,
                    "kind": e.kind,
                    "body": json.dumps(e.body),
                    "prev": e.prev_hash,
                    "hash": e.hash,
                },
            )
    await db.migrate()
    async with db.session() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT seq, ts, kind, body, prev_hash, hash, principal_id, actor, identity_id, code "
                    "FROM audit_events ORDER BY seq"
                )
            )
        ).all()
    for row, (_, body) in zip(rows, BODIES, strict=True):
        assert dict(
            zip(("principal_id", "actor", "identity_id", "code"), row[6:], strict=True)
        ) == indexed_columns(body)
    assert indexed_columns(BODIES[3][1]) == {
        "principal_id": None,
        "actor": "x" * 40,
        "identity_id": None,
        "code": None,
    }
    stored = [
        ChainedEvent(r[0], r[1], r[2], r[3] if isinstance(r[3], dict) else json.loads(r[3]), r[4], r[5])
        for r in rows
    ]
    assert verify_chain(stored).ok  # the copies are outside the hash: the chain is unchanged

    async def rollup() -> list[Any]:
        async with db.session() as session:
            query = "SELECT unit, bucket, kind, code, events FROM audit_counts ORDER BY 1, 2, 3, 4"
            return [tuple(r) for r in (await session.execute(text(query))).all()]

    backfilled = await rollup()
    assert ("day", "2025-01-01", "generation.refused", "consent.revoked", 1) in backfilled
    assert ("hour", "2025-01-03T00", "generation.released", "released", 1) in backfilled
    assert ("day", "2025-01-04", "odd", "", 1) in backfilled and len(backfilled) == 2 * len(BODIES)
    # After the migration the trigger counts each insert.
    last = seal(seq=5, ts="2025-01-04T00:30:00.000000+00:00", kind="odd", body={}, prev=prev)
    async with db.session() as session, session.begin():
        await session.execute(
            text(
                "INSERT INTO audit_events (seq, ts, kind, body, prev_hash, hash) "
                "VALUES (5, :ts, 'odd', '{}', :p, :h)"
            ),
            {"ts": last.ts, "p": prev, "h": last.hash},
        )
    assert ("hour", "2025-01-04T00", "odd", "", 2) in await rollup()

    def differences(connection: Connection) -> list[Any]:
        options = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(connection, opts=options), Base.metadata)

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []  # the migration mirrors tables.py exactly
    assert "console_sessions" in await _schema(db)
    await _alembic(db, lambda c: command.downgrade(c, "0004"))
    schema = await _schema(db)
    assert "console_sessions" not in schema and "code" not in schema["audit_events"]
    assert "audit_counts" not in schema
    async with db.session() as session, session.begin():  # the trigger went with its table
        await session.execute(
            text(
                "INSERT INTO audit_events VALUES (6, '2025-01-05T00:00:00.000000+00:00', 'odd', '{}', :p, :h)"
            ),
            {"p": last.hash, "h": "f" * 64},
        )
    await db.migrate()  # and up again: the rollup is filled anew from every event
    assert sum(row[4] for row in await rollup() if row[0] == "day") == len(BODIES) + 2
    await db.dispose()
