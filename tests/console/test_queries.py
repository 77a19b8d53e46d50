"""Every console page reads on one database session (one pool check-out, hence one pre-ping on
PostgreSQL) with a few statements, however many rows it shows: no session per query, no query
per row (issue 14: each page renders in 200 ms at 100,000 events; bench/console_pages.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.policies import codes
from tests.console.conftest import ConsoleWorld, sign_in

MOST_STATEMENTS = 7
"""The report's: viewer, counts, seq span, revocations and erasures, erasure cascades,
checkpoints, head."""


@contextmanager
def traffic(world: ConsoleWorld) -> Iterator[dict[str, int]]:
    """Counts pool check-outs and SQL statements on the gate's engine meanwhile."""
    seen = {"checkouts": 0, "statements": 0}
    engine = world.gate.db.engine.sync_engine

    def checkout(*_: Any) -> None:
        seen["checkouts"] += 1

    def statement(*_: Any) -> None:
        seen["statements"] += 1

    event.listen(engine.pool, "checkout", checkout)
    event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(engine.pool, "checkout", checkout)
        event.remove(engine, "before_cursor_execute", statement)


async def test_each_page_is_one_session_and_a_few_statements(world: ConsoleWorld) -> None:
    for prompt in ("a portrait", "a portrait in uniform"):  # a release and a refusal
        await world.generate(prompt)
    # Two erasures: the report's cascades must not cost a query each.
    for who in ("alice", "bob"):
        await world.gate.erase(LOCAL_ACTOR, world.ids[who])
    c = await sign_in(world, "admin")
    released = (await c.get(f"{world.base}/decisions?decision=released")).text
    seq = released.split("/decisions/", 1)[1].split('"', 1)[0]
    today = datetime.now(UTC).date()
    pages = [
        "/",
        "/?days=1",
        "/?days=30",
        "/decisions",
        f"/decisions?code={codes.CONSENT_PROMPT_DENIED}",
        "/decisions?principal=requester-1&decision=refused",
        f"/decisions?identity={world.ids['alice']}",
        f"/decisions?since={today}&until={today + timedelta(days=1)}",
        "/decisions?before=5",
        f"/decisions/{seq}",
        "/identities",
        f"/identities/{world.ids['alice']}",
        "/report",
        f"/report?since={today}&until={today + timedelta(days=1)}",
        "/verify",
        "/calibration",
    ]
    for page in pages:
        with traffic(world) as seen:
            r = await c.get(world.base + page)
        assert r.status_code == 200, (page, r.text[:300])
        assert seen["checkouts"] == 1, (page, seen)
        assert seen["statements"] <= MOST_STATEMENTS, (page, seen)
    report = (await c.get(f"{world.base}/report")).text
    assert report.count("templates destroyed: 3") == 2  # each erasure's cascade is shown
