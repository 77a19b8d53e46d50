"""The ``audit_counts`` rollup, on SQLite and PostgreSQL: the trigger counts every inserted event
(the gate's own appends and raw inserts alike), and ``counts`` over any range (whole days, whole
hours, partial hours at the edges, ranges inside one hour) equals counting the events one by one.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from consentry.gateway.storage.audit_counts import counts, plan
from consentry.gateway.storage.audit_index import indexed_columns
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import AuditCount, AuditEvent
from consentry.provenance.audit import GENESIS, seal
from consentry.provenance.audit_signing import AuditSigner

T0 = datetime(2025, 3, 1, 21, 17, 5, 250_000, tzinfo=UTC)
KINDS = [
    ("generation.released", "released"),
    ("generation.refused", "face.unknown"),
    ("generation.refused", "consent.revoked"),
    ("grant.revoked", None),
]


async def fill(db: Database, n: int, seed: int = 7) -> list[tuple[datetime, str, str]]:
    """``n`` chained events over about three days, inserted as rows; returns (ts, kind, code)."""
    rng = random.Random(seed)
    moments = sorted(T0 + timedelta(seconds=rng.uniform(0, 3 * 86400)) for _ in range(n))
    # Events exactly on hour and day boundaries, where an off-by-one would show.
    moments[n // 3] = moments[n // 3].replace(minute=0, second=0, microsecond=0)
    moments[n // 2] = moments[n // 2].replace(hour=0, minute=0, second=0, microsecond=0)
    moments.sort()
    rows, out, prev = [], [], GENESIS
    for seq, moment in enumerate(moments, start=1):
        kind, decision = rng.choice(KINDS)
        body = {"decision": decision} if decision else {"actor": "prn_x"}
        event = seal(seq=seq, ts=moment.isoformat(timespec="microseconds"), kind=kind, body=body, prev=prev)
        prev = event.hash
        rows.append(
            {"seq": seq, "ts": event.ts, "kind": kind, "body": event.body, "prev_hash": event.prev_hash}
            | {"hash": event.hash}
            | indexed_columns(event.body)
        )
        out.append((moment, kind, decision or ""))
    async with db.session() as s, s.begin():
        await s.execute(AuditEvent.__table__.insert(), rows)  # type: ignore[attr-defined]
    return out


def by_hand(events: list[tuple[datetime, str, str]], since: datetime, until: datetime, chars: int) -> list:
    tally = Counter(
        (m.isoformat(timespec="microseconds")[:chars], kind, code)
        for m, kind, code in events
        if since <= m < until
    )
    return sorted((b, k, c, n) for (b, k, c), n in tally.items())


async def test_counts_equal_counting_every_event(database_url: str) -> None:
    db = Database(database_url)
    await db.migrate()
    events = await fill(db, 1500)
    rng = random.Random(3)
    day, hour = (
        T0.replace(hour=0, minute=0, second=0, microsecond=0),
        T0.replace(minute=0, second=0, microsecond=0),
    )
    ranges = [
        (T0 - timedelta(days=1), T0 + timedelta(days=5)),  # everything
        (day + timedelta(days=1), day + timedelta(days=3)),  # whole days only
        (hour + timedelta(hours=2), hour + timedelta(hours=9)),  # whole hours only
        (hour + timedelta(hours=5, minutes=10), hour + timedelta(hours=5, minutes=50)),  # inside one hour
        (hour + timedelta(minutes=30), hour + timedelta(hours=1, minutes=30)),  # across one boundary
        (T0 + timedelta(days=1), T0 + timedelta(days=1)),  # empty
    ]
    for _ in range(12):
        a = T0 + timedelta(seconds=rng.uniform(-3600, 3.2 * 86400))
        ranges.append((a, a + timedelta(seconds=rng.uniform(1, 2.5 * 86400))))
    pieces = {source for since, until in ranges for source, _, _ in plan(since, until, days=True)}
    assert pieces == {"day", "hour", "events"}  # every kind of piece was exercised
    async with db.session() as s:
        for since, until in ranges:
            for chars in (10, 13):
                assert await counts(s, since, until, chars) == by_hand(events, since, until, chars), (
                    since,
                    until,
                    chars,
                )
    await db.dispose()


async def test_the_gates_appends_are_counted_in_their_transaction(database_url: str, tmp_path: Path) -> None:
    db = Database(database_url)
    await db.migrate()
    log = AuditLog(db, AuditSigner.load_or_create(tmp_path))
    await log.append("generation.refused", {"decision": "face.unknown"})
    await log.append("generation.refused", {"decision": "face.unknown"})
    await log.append("grant.revoked", {"actor": "prn_x"})

    async def fails(*_: object) -> None:
        raise RuntimeError("the unit of work failed")

    with pytest.raises(RuntimeError):
        await log.append("generation.released", {"decision": "released"}, also=fails)
    async with db.session() as s:
        rows = (
            await s.execute(select(AuditCount.unit, AuditCount.kind, AuditCount.code, AuditCount.events))
        ).all()
    total: Counter[tuple[str, str, str]] = Counter()
    for unit, kind, code, n in rows:  # summed: the appends may straddle an hour
        total[(unit, kind, code)] += n
    # The rolled-back append left no count behind.
    assert sorted((*key, n) for key, n in total.items()) == [
        ("day", "generation.refused", "face.unknown", 2),
        ("day", "grant.revoked", "", 1),
        ("hour", "generation.refused", "face.unknown", 2),
        ("hour", "grant.revoked", "", 1),
    ]
    await db.dispose()
