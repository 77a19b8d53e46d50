"""Console pages at 100,000 audit events, on SQLite and PostgreSQL: each page over HTTP, in-process.

Fills a fresh database with N properly chained, signed audit events spread over 30 days (the real
schema, hash chain, indexed body copies, the ``audit_counts`` rollup kept by its trigger,
checkpoints and head; generation decisions with every stage's verdict and timing, releases with
their generation records, grant revocations and erasures with their database state), plus
identities, grants and principals; then VACUUM ANALYZE, as autovacuum would after a bulk load.
Serves the real app (fakes for the face and diffusion models, which no console page uses), signs
in through the login form, and times each page, interleaved; the first request of each page
(cold process caches) is reported apart, with the SQL statements and pool check-outs it took.
Several ``--events`` sizes show whether a page's cost grows with the log. Also: what the rollup's
trigger adds to an audit append (appends with and without it, interleaved).
Goal: every page <= 200 ms, median and p95 (issue 14 line 7).

    .venv/bin/python bench/console_pages.py [--events 10000,100000] [--repeats 40]
        [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from common import Timing, goal, goal_text, machine_info, md_table, write_results
from PIL import Image
from sqlalchemy import Table, event, text, update

from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.storage.audit_index import indexed_columns
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import (
    AuditCheckpoint,
    AuditEvent,
    AuditHead,
    GenerationRecord,
    Grant,
    Identity,
    Principal,
)
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator
from consentry.gateway.wiring import open_gate
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.provenance.audit import seal
from consentry.provenance.audit_signing import AuditSigner
from consentry.provenance.keys import init_dev_keys

GOAL_MS = 200.0
BATCH = 5_000
DAYS = 30
IDENTITIES, PRINCIPALS = 2_000, 20
ERASABLE = 100
"""The last identities are kept for erasures (no generation names them)."""
STAGES = ("consent", "verify_refs", "generate", "verify_output", "watermark", "sign")
REFUSALS = [  # (code, the stage that refuses), weighted by how often a gate sees them
    (codes.CONSENT_PROMPT_DENIED, "consent"),
    (codes.CONSENT_PROMPT_DENIED, "consent"),
    (codes.CONSENT_MISSING, "consent"),
    (codes.CONSENT_REVOKED, "consent"),
    (codes.FACE_UNKNOWN, "verify_refs"),
    (codes.FACE_PROTECTED, "verify_refs"),
    (codes.OUTPUT_MISMATCH, "verify_output"),
    (codes.OUTPUT_PROTECTED, "verify_output"),
]


def table(model: Any) -> Table:
    t = model.__table__
    assert isinstance(t, Table)
    return t


def stages(rng: random.Random, refusal: tuple[str, str] | None) -> dict[str, Any]:
    out = {}
    for name in STAGES:
        refused = refusal is not None and refusal[1] == name
        out[name] = {
            "allowed": not refused,
            "code": refusal[0] if refusal is not None and refused else "ok",
            "reason": "refused by the bench's rule" if refused else "",
            "scores": {"best": round(rng.uniform(0.2, 0.99), 6)} if "verify" in name else {},
            "elapsed_ms": round(rng.lognormvariate(1.5 if name != "generate" else 5.5, 0.4), 3),
            "fault": False,
        }
        if refused:
            break
    return out


async def fill(settings: Settings, events: int, seed: int = 1) -> dict[str, Any]:
    """Write the data set; returns what the timing step needs (ids to open, a key)."""
    rng = random.Random(seed)
    start = time.perf_counter()
    gate = await open_gate(
        settings, analyzer=FingerprintAnalyzer(), generator=PhotoGenerator(Image.new("RGB", (8, 8)))
    )
    try:
        admin = await gate.principals.create("bench-admin", "admin")
        signer = AuditSigner.load_or_create(settings.keys_dir)
        t0 = datetime.now(UTC) - timedelta(days=DAYS)
        principals = [f"prn_{k:016x}" for k in range(PRINCIPALS)]
        identities = [f"idn_{k:016x}" for k in range(IDENTITIES)]
        grants = [f"gnt_{k:016x}" for k in range(IDENTITIES)]
        async with gate.db.session() as s, s.begin():
            await s.execute(
                table(Principal).insert(),
                [
                    {"id": p, "name": f"studio-{k}", "role": "requester", "created_at": t0}
                    for k, p in enumerate(principals)
                ],
            )
            await s.execute(
                table(Identity).insert(),
                [
                    {
                        "id": i,
                        "label": f"Person {k}",
                        "status": "active",
                        "data_key": secrets.token_bytes(60),
                        "created_at": t0 + timedelta(seconds=k * 60),
                        "erased_at": None,
                    }
                    for k, i in enumerate(identities)
                ],
            )
            await s.execute(
                table(Grant).insert(),
                [
                    {
                        "id": g,
                        "identity_id": identities[k],
                        "principal_id": principals[k % PRINCIPALS],
                        "purposes": ["portrait"],
                        "deny_terms": [],
                        "expires_at": None,
                        "max_uses": None,
                        "uses": 0,
                        "evidence": {"attested_by": "bench", "consent_text_sha256": "0" * 64},
                        "created_at": t0,
                        "revoked_at": None,
                        "use_enrollment_photos": False,
                    }
                    for k, g in enumerate(grants)
                ],
            )
        # The chain continues after the admin's creation event (seq 1).
        async with gate.db.session() as s:
            head = await s.get(AuditHead, 1)
            assert head is not None
            prev, first_seq = head.hash, head.seq + 1
        step = timedelta(days=DAYS) / events
        last_seq = first_seq + events - 1
        released_seq = None
        erasable = identities[IDENTITIES - ERASABLE :]
        erased: dict[str, datetime] = {}
        for batch_start in range(first_seq, last_seq + 1, BATCH):
            rows, records, points = [], [], []
            for seq in range(batch_start, min(batch_start + BATCH, last_seq + 1)):
                ts = (t0 + step * (seq - first_seq)).isoformat(timespec="microseconds")
                k = rng.randrange(IDENTITIES - ERASABLE)
                roll = rng.random()
                if 0.0400 <= roll < 0.0405 and len(erased) < ERASABLE:
                    victim = erasable[len(erased)]
                    erased[victim] = datetime.fromisoformat(ts)
                    kind, body = (
                        "identity.erased",
                        {
                            "identity_id": victim,
                            "actor": admin.principal.id,
                            "templates_destroyed": 3,
                            "grants_revoked": 1,
                            "records_flagged": 0,
                            "adapters_deleted": 0,
                            "photos_deleted": 0,
                        },
                    )
                elif roll < 0.03:
                    kind, body = (
                        "grant.revoked",
                        {"grant_id": grants[k], "actor": admin.principal.id, "adapters_deleted": 0},
                    )
                elif roll < 0.04:
                    kind, body = (
                        "grant.created",
                        {
                            "grant_id": grants[k],
                            "identity_id": identities[k],
                            "principal_id": principals[k % PRINCIPALS],
                            "purposes": ["portrait"],
                            "use_enrollment_photos": False,
                            "actor": admin.principal.id,
                        },
                    )
                else:
                    refusal = rng.choice(REFUSALS) if roll < 0.40 else None
                    request_id = f"gen_{seq:016x}"
                    body = {
                        "request_id": request_id,
                        "principal_id": principals[k % PRINCIPALS],
                        "identity_id": identities[k],
                        "purpose": "portrait",
                        "prompt_sha256": hashlib.sha256(str(seq).encode()).hexdigest(),
                        "references": 1,
                        "mode": "txt2img",
                        "adapter_id": None,
                        "decision": refusal[0] if refusal else "released",
                        "stages": stages(rng, refusal),
                        "policy_version": "bench",
                    }
                    kind = "generation.refused" if refusal else "generation.released"
                    if refusal is None:
                        body |= {"watermark": f"{seq:016x}", "model": "bench-model", "untrained": False}
                        released_seq = seq
                        records.append(
                            {
                                "id": request_id,
                                "watermark": f"{seq:016x}",
                                "principal_id": principals[k % PRINCIPALS],
                                "identity_id": identities[k],
                                "grant_id": grants[k],
                                "prompt_sha256": body["prompt_sha256"],
                                "model": "bench-model",
                                "untrained": False,
                                "manifest": {"claim_generator": "consentry", "assertions": ["c2pa.actions"]},
                                "outputs": [f"{request_id}_0.png"],
                                "audit_seq": seq,
                                "subject_erased": False,
                                "created_at": datetime.fromisoformat(ts),
                            }
                        )
                ev = seal(seq=seq, ts=ts, kind=kind, body=body, prev=prev)
                rows.append(
                    {
                        "seq": seq,
                        "ts": ev.ts,
                        "kind": kind,
                        "body": ev.body,
                        "prev_hash": prev,
                        "hash": ev.hash,
                    }
                    | indexed_columns(ev.body)
                )
                if seq % settings.audit_checkpoint_every == 0:
                    points.append({"seq": seq, "hash": ev.hash, "signature": signer.sign(seq, ev.hash)})
                prev = ev.hash
            async with gate.db.session() as s, s.begin():
                await s.execute(table(AuditEvent).insert(), rows)
                if records:
                    await s.execute(table(GenerationRecord).insert(), records)
                if points:
                    await s.execute(table(AuditCheckpoint).insert(), points)
        async with gate.db.session() as s, s.begin():
            head = await s.get(AuditHead, 1)
            assert head is not None
            head.seq, head.hash, head.signature = last_seq, prev, signer.sign(last_seq, prev)
            for victim, at in erased.items():  # what Gate.erase leaves behind
                await s.execute(
                    update(table(Identity))
                    .where(table(Identity).c.id == victim)
                    .values(status="erased", label="", data_key=None, erased_at=at)
                )
                await s.execute(
                    update(table(Grant)).where(table(Grant).c.identity_id == victim).values(revoked_at=at)
                )
        # As autovacuum would after a bulk load (this server runs with it off): the rollup's
        # rows were updated once per event, 5,000 events to a transaction.
        async with gate.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE" if gate.db.is_sqlite else "VACUUM ANALYZE")
    finally:
        await gate.close()
    return {
        "admin_key": admin.secret,
        "fill_s": round(time.perf_counter() - start, 1),
        "released_seq": released_seq,
        "identity": identities[IDENTITIES // 2],
        "principal": "studio-3",
        "t0": t0,
        "events": last_seq,
        "erasures": len(erased),
    }


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Gate]]:
    """The app with its lifespan run in this event loop (asyncpg pools belong to one loop)."""

    async def factory(s: Settings) -> Gate:
        return await open_gate(
            s, analyzer=FingerprintAnalyzer(), generator=PhotoGenerator(Image.new("RGB", (8, 8)))
        )

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield client, app.state["consentry_gate"]
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


async def time_pages(settings: Settings, facts: dict[str, Any], repeats: int) -> dict[str, Any]:
    t0: datetime = facts["t0"]
    day = lambda n: (t0 + timedelta(days=n)).date().isoformat()  # noqa: E731
    pages = {
        "overview (14 days)": "/console/",
        "overview (30 days)": "/console/?days=30",
        "decisions, first page": "/console/decisions",
        "decisions, code filter": f"/console/decisions?code={codes.FACE_UNKNOWN}",
        "decisions, principal + refused": (
            f"/console/decisions?principal={facts['principal']}&decision=refused"
        ),
        "decisions, identity": f"/console/decisions?identity={facts['identity']}",
        "decisions, time range (day 3)": f"/console/decisions?since={day(2)}&until={day(3)}",
        "decisions, deep page by key": "/console/decisions?before=1500",
        "decision page (release + record)": f"/console/decisions/{facts['released_seq']}",
        "identities": "/console/identities",
        "identity page": f"/console/identities/{facts['identity']}",
        "compliance report (7 days)": f"/console/report?since={day(20)}&until={day(27)}",
        "compliance report (30 days)": "/console/report",
    }
    async with serve(settings) as (client, gate):
        form = await client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf
        r = await client.post("/console/login", data={"api_key": facts["admin_key"], "csrf": csrf.group(1)})
        assert r.status_code == 303, r.text

        async def get(path: str) -> httpx.Response:
            resp = await client.get(path)
            assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
            return resp

        # The first request of each page, on a fresh process (cold per-process caches: stage
        # timings, verified checkpoint signatures; cold prepared statements), with the SQL it
        # takes: statements run and pool check-outs (one pre-ping each on PostgreSQL).
        engine = gate.db.engine.sync_engine
        seen = {"statements": 0, "checkouts": 0}

        def on_statement(*_: Any) -> None:
            seen["statements"] += 1

        def on_checkout(*_: Any) -> None:
            seen["checkouts"] += 1

        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine.pool, "checkout", on_checkout)
        first: dict[str, dict[str, Any]] = {}
        for name, path in pages.items():
            seen.update(statements=0, checkouts=0)
            begin = time.perf_counter()
            resp = await get(path)
            first[name] = {
                "cold_ms": round((time.perf_counter() - begin) * 1000.0, 2),
                "bytes": len(resp.content),
                "rows": len(re.findall(r'class="open-event"', resp.text))
                + len(re.findall(r'<a href="/console/decisions/\d+">', resp.text)),
                **seen,
            }
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine.pool, "checkout", on_checkout)

        samples: dict[str, list[float]] = {name: [] for name in pages}
        names = list(pages)
        for i in range(repeats):  # interleaved: a load spike hits every page alike
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                begin = time.perf_counter()
                await get(pages[name])
                samples[name].append((time.perf_counter() - begin) * 1000.0)

    return {
        name: Timing(tuple(s)).summary() | first[name] | {"path": pages[name]} for name, s in samples.items()
    }


async def append_cost(backend: str, appends: int) -> dict[str, Any]:
    """Median ms of ``AuditLog.append`` with the rollup's trigger and without it (dropped on a
    second database), interleaved one append at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        signer = AuditSigner.load_or_create(Path(tmp))
        urls = {}
        pg_names = []
        for variant in ("with trigger", "without trigger"):
            if backend == "postgresql":
                url, name = await pg_database()
                pg_names.append(name)
            else:
                url = f"sqlite+aiosqlite:///{tmp}/{variant.replace(' ', '_')}.db"
            urls[variant] = url
        dbs = {v: Database(u) for v, u in urls.items()}
        try:
            for variant, db in dbs.items():
                await db.migrate()
                if variant == "without trigger":
                    async with db.engine.begin() as conn:
                        await conn.execute(
                            text(
                                "DROP TRIGGER audit_events_count"
                                + ("" if db.is_sqlite else " ON audit_events")
                            )
                        )
            logs = {v: AuditLog(db, signer) for v, db in dbs.items()}
            body = {"decision": "face.unknown", "principal_id": "prn_x", "identity_id": "idn_x", "stages": {}}
            samples: dict[str, list[float]] = {v: [] for v in logs}
            for i in range(appends + 10):
                for v in list(logs)[i % 2 :] + list(logs)[: i % 2]:
                    begin = time.perf_counter()
                    await logs[v].append("generation.refused", body)
                    if i >= 10:  # the first ten warm the pools and statement caches
                        samples[v].append((time.perf_counter() - begin) * 1000.0)
        finally:
            for db in dbs.values():
                await db.dispose()
            for name in pg_names:
                await pg_drop(name)
    return {v: Timing(tuple(s)).summary() for v, s in samples.items()}


async def pg_database() -> tuple[str, Any]:
    import asyncpg

    name = f"consentry_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect("postgresql://127.0.0.1:5432/test", timeout=5)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return f"postgresql+asyncpg://127.0.0.1:5432/{name}", name


async def pg_drop(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect("postgresql://127.0.0.1:5432/test", timeout=5)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def run_backend(backend: str, events: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        init_dev_keys(data / "keys")
        pg_name = None
        url = ""
        if backend == "postgresql":
            url, pg_name = asyncio.run(pg_database())
        try:
            settings = Settings(data_dir=data, database_url=url, device="cpu")
            facts = asyncio.run(fill(settings, events))
            pages = asyncio.run(time_pages(settings, facts, repeats))
        finally:
            if pg_name:
                asyncio.run(pg_drop(pg_name))
    keep = ("fill_s", "events", "erasures")
    return {k: facts[k] for k in keep} | {"pages": pages}


def cell(page: dict[str, Any]) -> str:
    return f"{page['median_ms']:.1f} / {page['p95_ms']:.1f}"


def report(
    results: dict[str, Any], sizes: list[int], repeats: int, appends: int
) -> tuple[str, dict[str, Any]]:
    backends = list(results)
    big = sizes[-1]
    names = list(results[backends[0]][big]["pages"])
    at = {b: results[b][big]["pages"] for b in backends}
    worst = max(max(p["p95_ms"], p["median_ms"]) for b in backends for p in at[b].values())
    g = goal(worst, GOAL_MS, at_most=True)
    main = [
        [name, at[backends[0]][name]["rows"]]
        + [f"{at[b][name]['statements']} / {at[b][name]['checkouts']}" for b in backends]
        + [cell(at[b][name]) for b in backends]
        + [f"{at[b][name]['cold_ms']:.0f}" for b in backends]
        for name in names
    ]
    md = (
        f"# Console pages at {big:,} audit events\n\n"
        "Each page over HTTP in-process, signed in as an admin: median / p95 ms of "
        f"{repeats} interleaved runs after one first request; *SQL*: statements / pool check-outs "
        "of the page (one check-out: one pre-ping on PostgreSQL); *first*: ms of that first request "
        "in a fresh process (cold per-process caches and prepared statements); *rows*: table rows "
        "the page shows.\n\n"
        + md_table(
            [
                "page",
                "rows",
                *[f"SQL {b}" for b in backends],
                *[f"{b} ms" for b in backends],
                *[f"first {b}" for b in backends],
            ],
            main,
        )
        + f"\n\nGoal: every page {goal_text(g, 'ms')} (worst median or p95 over all pages and backends "
        f"at {big:,} events).\n"
    )
    if len(sizes) > 1:
        growth = [
            [name] + [cell(results[b][n]["pages"][name]) for b in backends for n in sizes] for name in names
        ]
        md += (
            "\n## Does a page's cost grow with the log?\n\nThe same pages, median / p95 ms, by events in "
            "the log (each size its own fresh database and process):\n\n"
            + md_table(["page", *[f"{b} {n:,}" for b in backends for n in sizes]], growth)
            + "\n"
        )
    md += (
        "\n## What the rollup costs an append\n\n"
        f"`AuditLog.append` with the `audit_counts` trigger and without it (dropped), {appends} "
        "appends each, interleaved, median / p95 ms:\n\n"
        + md_table(
            ["backend", "with trigger", "without trigger"],
            [
                [b, cell(results[b]["append"]["with trigger"]), cell(results[b]["append"]["without trigger"])]
                for b in backends
            ],
        )
        + "\n\nFill: "
        + ", ".join(f"{b} {n:,} events {results[b][n]['fill_s']:.0f} s" for b in backends for n in sizes)
        + ".\n"
    )
    return md, g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", default="10000,100000", help="comma-separated log sizes")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.events.split(","))
    info = machine_info()
    results: dict[str, Any] = {}
    for b in args.backends.split(","):
        results[b] = {n: run_backend(b, n, args.repeats) for n in sizes}
        results[b]["append"] = asyncio.run(append_cost(b, args.appends))
    md, g = report(results, sizes, args.repeats, args.appends)
    path_json, path_md = write_results(
        "console_pages",
        {"events": sizes, "repeats": args.repeats, "goal": g, **results, "machine": info},
        md,
    )
    print(md)
    print(f"wrote {path_json} and {path_md}")


if __name__ == "__main__":
    main()
