"""Bounded load test: N concurrent generate requests against ``consentry serve --workers W``.

Everything stays on loopback (127.0.0.1). The script builds a fresh data directory (tiny
pipeline, dev keys), uses a throw-away PostgreSQL database when one answers on 127.0.0.1:5432
(else SQLite), enrolls a real LFW person, grants a requester, then fires the requests at once
(about half with a reference photo of the subject; some refused on purpose: a stranger's photo
as reference, a prompt term the grant denies). It then proves that nothing was lost: every
request got an HTTP answer, every answer names its own audit event (distinct ``audit_seq``, the
right kind, decision and prompt hash), the log grew by exactly N, each release has its record
and files and no file lacks a record, and ``consentry audit verify`` passes.

Run: .venv/bin/python bench/load_generate.py [--requests 500] [--workers 3] [--db auto|sqlite|postgresql]
Writes bench/results/load_generate.{json,md}. Exit 0 only when every check passed. The whole run
stops by itself at ``--deadline-s`` and kills the server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from common import REPO, faces_dir, machine_info, md_table, repo_on_path, write_results
from gateway_proc import HOST, Server, cli, pg_database, run_under_deadline

DENIED_TERM = "swimsuit"
EXPECT = {"subject_ref": "released", "no_ref": "released", "stranger_ref": "face.unknown"}
EXPECT["denied_term"] = "consent.prompt_denied"
KINDS = ["subject_ref"] * 5 + ["no_ref"] * 3 + ["stranger_ref", "denied_term"]  # request i: KINDS[i % 10]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request got back (status None: no HTTP answer at all)."""

    i: int
    kind: str
    reference: str | None  # file name of the reference photo sent, if any
    prompt_sha256: str
    status: int | None
    code: str | None  # "released" for a 2xx, else the problem's code
    audit_seq: int | None
    record_id: str | None
    latency_ms: float
    error: str | None


def pick_photos(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(enrollment photos, subject references, stranger references) from single-face LFW frames."""
    people: dict[str, list[Path]] = {}
    with (root / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            if row["path"].startswith("lfw/") and row["faces"] == "1":
                people.setdefault(row["person"], []).append(root / row["path"])
    subject, stranger = sorted(n for n, p in people.items() if len(p) >= 7)[:2]
    return people[subject][:4], people[subject][4:], people[stranger]


Planned = list[tuple[Outcome, dict[str, Any]]]


def plan(n: int, subject: str, refs: list[Path], strangers: list[Path]) -> Planned:
    """Deterministic requests: (the fields known before sending, the JSON body). Prompts are
    unique, so that each audit event can be matched to its request by the prompt's hash."""
    enc = {p: base64.b64encode(p.read_bytes()).decode() for p in [*refs, *strangers]}
    out = []
    for i in range(n):
        kind = KINDS[i % 10]
        prompt = f"a studio portrait, request {i}" + (f" in a {DENIED_TERM}" if kind == "denied_term" else "")
        body: dict[str, Any] = {"subject_id": subject, "purpose": "portrait", "prompt": prompt, "seed": i}
        ref = {"subject_ref": refs[i % len(refs)], "stranger_ref": strangers[i % len(strangers)]}.get(kind)
        if ref is not None:
            body["references"] = [enc[ref]]
        sha = hashlib.sha256(prompt.encode()).hexdigest()
        name = ref.name if ref is not None else None
        out.append((Outcome(i, kind, name, sha, None, None, None, None, 0.0, None), body))
    return out


async def fire(
    urls: str | list[str], key: str, reqs: Planned, concurrency: int, limit_s: float
) -> tuple[list[Outcome], float]:
    """Send every request at once (``concurrency`` in flight); with several URLs, request i goes
    to replica i mod n: no sticky routing, as behind a plain load balancer."""
    bases = [urls] if isinstance(urls, str) else urls
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(connect=60, read=limit_s, write=60, pool=limit_s)
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, o: Outcome, body: dict[str, Any]) -> Outcome:
        async with gate:
            start = time.perf_counter()
            try:
                url = f"{bases[o.i % len(bases)]}/v1/generate"
                r = await client.post(url, json=body, headers={"X-API-Key": key})
                data = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                ms = (time.perf_counter() - start) * 1000
                return replace(o, latency_ms=ms, error=f"{type(exc).__name__}: {exc}")
            ms = (time.perf_counter() - start) * 1000
        code = "released" if r.is_success else data.get("code")
        seq, rid = data.get("audit_seq"), data.get("record_id")
        return replace(o, status=r.status_code, code=code, audit_seq=seq, record_id=rid, latency_ms=ms)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        outs = await asyncio.gather(*(one(client, o, body) for o, body in reqs))
        return list(outs), time.perf_counter() - start


DbState = tuple[int, int, dict[int, Any], dict[str, Any]]


async def read_db(db_url: str, seqs: list[int]) -> DbState:
    """(event count, highest seq, events by seq, generation records by id), read directly."""
    repo_on_path()
    from sqlalchemy import func, select

    from consentry.gateway.storage.db import Database
    from consentry.gateway.storage.tables import AuditEvent, GenerationRecord

    db = Database(db_url)
    try:
        async with db.session() as s:
            count, top = (await s.execute(select(func.count(), func.max(AuditEvent.seq)))).one()
            events = {e.seq: e for e in await s.scalars(select(AuditEvent).where(AuditEvent.seq.in_(seqs)))}
            records = {r.id: r for r in await s.scalars(select(GenerationRecord))}
        return int(count), int(top or 0), events, records
    finally:
        await db.dispose()


def matches(o: Outcome, event: Any) -> bool:
    """The audit event says what the HTTP answer said, about this very request."""
    said = {"prompt_sha256": o.prompt_sha256, "decision": o.code}
    if event is None or any(event.body.get(k) != v for k, v in said.items()):
        return False
    if o.code == "released":
        return bool(event.kind == "generation.released" and event.body.get("request_id") == o.record_id)
    return bool(event.kind == "generation.refused")


def check(outs: list[Outcome], setup_events: int, db: DbState, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every invariant of the run, each with ok and its evidence (offending request numbers)."""
    count, top, events, records = db
    answered = [o for o in outs if o.status is not None]
    seqs = [o.audit_seq for o in answered if o.audit_seq is not None]
    fives = [(o.i, o.status, o.code) for o in answered if o.status is not None and o.status >= 500]
    other_5xx = [f for f in fives if f[2] != "stage.timeout"]
    unaudited = [(o.i, o.status, o.code) for o in answered if o.audit_seq is None]
    mismatched = [o.i for o in answered if o.audit_seq is None or not matches(o, events.get(o.audit_seq))]
    rec = {
        o.i: records.get(o.record_id) if o.record_id is not None else None
        for o in answered
        if o.code == "released"
    }
    bad = [i for i, r in rec.items() if r is None or not all(Path(p).is_file() for p in r.outputs)]
    bad += [o.i for o in answered if (r := rec.get(o.i)) is not None and r.audit_seq != o.audit_seq]
    listed = {Path(p).name for r in records.values() for p in r.outputs}
    orphans = sorted({p.name for p in out_dir.iterdir()} - listed) if out_dir.is_dir() else []
    total_ok = count == setup_events + len(outs) and top == count
    return {
        "answered": {"ok": len(answered) == len(outs), "lost": [o.i for o in outs if o.status is None]},
        "no_5xx_but_stage_timeout": {"ok": not other_5xx, "stage_timeouts": len(fives) - len(other_5xx)}
        | {"other_5xx": other_5xx},
        "every_answer_audited": {"ok": not unaudited, "without_audit_seq": unaudited},
        "audit_seq_distinct": {"ok": len(set(seqs)) == len(seqs), "duplicates": len(seqs) - len(set(seqs))},
        "event_matches_request": {"ok": not mismatched, "mismatched": mismatched},
        "event_total": {"ok": total_ok, "setup": setup_events, "after": count, "highest_seq": top},
        "release_records_and_files": {"ok": not bad, "bad": sorted(set(bad)), "records": len(records)},
        "no_file_without_record": {"ok": not orphans, "orphans": orphans},
    }


async def setup(
    args: argparse.Namespace, work: Path, state: dict[str, Any], replicas: int = 1
) -> dict[str, Any]:
    """Database, models, keys, principals, server(s), enrollment, grant: what the load needs.
    ``replicas`` servers share the one database and data directory (``state["servers"]``)."""
    db_name = f"consentry_load_{secrets.token_hex(5)}"
    if args.db != "sqlite" and await pg_database(create=db_name):
        state["pg_db"] = db_name
        db_url = f"postgresql+asyncpg://127.0.0.1:5432/{db_name}"
    elif args.db == "postgresql":
        raise RuntimeError("PostgreSQL not reachable on 127.0.0.1:5432")
    else:
        db_url = f"sqlite+aiosqlite:///{work / 'data' / 'consentry.db'}"
    # Rate limits far above the load, so that every request reaches the gate's stages.
    conf = {"DATA_DIR": work / "data", "DATABASE_URL": db_url, "DEVICE": "cpu", "IMAGE_SIZE": 256}
    conf |= {"RATE_LIMIT_PER_MINUTE": 1e9, "RATE_LIMIT_BURST": 10**9, "GENERATION_STEPS": args.steps}
    conf |= {"STAGE_TIMEOUT_S": args.stage_timeout_s}
    # The whole load is admitted: this measures the gate's throughput, not its refusals.
    conf |= {"QUEUE_DEPTH": 10_000, "QUEUE_WAIT_S": args.deadline_s}
    env = {**os.environ, "PYTHONPATH": str(REPO)} | {f"CONSENTRY_{k}": str(v) for k, v in conf.items()}
    cli(env, work, "models", "tiny")
    cli(env, work, "keys", "init")
    admin = json.loads(cli(env, work, "principal", "add", "load-admin", "--role", "admin"))["api_key"]
    key = json.loads(cli(env, work, "principal", "add", "load-req", "--role", "requester"))["api_key"]
    start = time.perf_counter()
    state["servers"] = [Server(env, work, args.workers, name=f"server{n}") for n in range(replicas)]
    state["server"] = server = state["servers"][0]
    await asyncio.gather(*(s.ready() for s in state["servers"]))
    startup_s = time.perf_counter() - start
    enroll, refs, strangers = pick_photos(faces_dir())
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as c:
        photos, head = [base64.b64encode(p.read_bytes()).decode() for p in enroll], {"X-API-Key": admin}
        r = await c.post("/v1/identities", json={"label": "load", "photos": photos}, headers=head)
        subject = r.raise_for_status().json()["id"]
        grant = {"identity_id": subject, "principal": "load-req", "purposes": ["portrait"]}
        grant |= {"deny_terms": [DENIED_TERM], "attested_by": "load test", "consent_text_sha256": "0" * 64}
        grant_id = (await c.post("/v1/grants", json=grant, headers=head)).raise_for_status().json()["id"]
    people = {"subject_person": enroll[0].parent.name, "stranger_person": strangers[0].parent.name}
    database = "postgresql" if "pg_db" in state else "sqlite"
    return {
        "env": env,
        "db_url": db_url,
        "key": key,
        "admin": admin,
        "subject": subject,
        "grant": grant_id,
    } | {
        "photos": (refs, strangers),
        "settings": {**vars(args), "image_size": 256, "database": database, "host": HOST, **people},
        "startup_s": round(startup_s, 2),
    }


async def run(args: argparse.Namespace, work: Path, state: dict[str, Any]) -> dict[str, Any]:
    s = await setup(args, work, state)
    setup_events = (await read_db(s["db_url"], []))[0]
    reqs = plan(args.requests, s["subject"], *s["photos"])
    outs, wall_s = await fire(state["server"].url, s["key"], reqs, args.concurrency, args.deadline_s)
    db = await read_db(s["db_url"], [o.audit_seq for o in outs if o.audit_seq is not None])
    checks = check(outs, setup_events, db, work / "data" / "outputs")
    verify = json.loads(cli(s["env"], work, "audit", "verify", "--json", ok=(0, 4)))
    checks["chain_verifies"] = {"ok": bool(verify["ok"]) and verify["events"] == db[0], "report": verify}
    state["server"].stop()
    log = state["server"].log.read_text(errors="replace").splitlines()
    notable = [ln for ln in log if any(w in ln for w in ("Traceback", "ERROR", "WARNING", "locked"))]
    lat = sorted(o.latency_ms for o in outs if o.status is not None)
    rank = {f"p{q}": lat[max(0, -(-q * len(lat) // 100) - 1)] for q in (50, 99)} if lat else {}
    rank |= {"min": lat[0], "max": lat[-1]} if lat else {}
    by_kind = Counter((o.kind, o.code) for o in outs)
    odd = Counter((o.kind, o.reference, o.code) for o in outs if o.code != EXPECT[o.kind])
    return {k: s[k] for k in ("settings", "startup_s")} | {
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(lat) / wall_s, 3),
        # Nearest-rank percentiles: observed samples, never interpolations.
        "latency_ms": {k: round(v, 1) for k, v in rank.items()},
        "outcomes": {f"{k} -> {c}": n for (k, c), n in sorted(by_kind.items(), key=str)},
        "expected": EXPECT,
        "unexpected": {f"{k} {ref} -> {c}": n for (k, ref, c), n in odd.items()},
        "status_counts": {str(k): n for k, n in sorted(Counter(o.status for o in outs).items(), key=str)},
        "checks": checks,
        "all_checks_ok": all(c["ok"] for c in checks.values()),
        "server_log": {"lines": len(log), "notable": len(notable), "first_notable": notable[:10]},
        "latencies_ms_in_request_order": [round(o.latency_ms) for o in outs],
        "not_as_planned_detail": [asdict(o) for o in outs if o.code != EXPECT[o.kind]],
    }


def markdown(r: dict[str, Any]) -> str:
    s, lat = r["settings"], r["latency_ms"] or {}
    head = (
        f"# Load test: {s['requests']} concurrent generate requests\n\n"
        f"`consentry serve --workers {s['workers']}` on {s['host']}, {s['database']}, tiny pipeline "
        f"{s['image_size']}² x {s['steps']} steps, {s['concurrency']} in flight, stage timeout "
        f"{s['stage_timeout_s']:g} s. Wall {r['wall_s']} s, **{r['throughput_rps']} req/s**, latency "
        f"p50 **{lat.get('p50')} ms**, p99 **{lat.get('p99')} ms** (max {lat.get('max')} ms).\n\n"
    )
    outcomes = md_table(["request kind -> answer", "count"], list(r["outcomes"].items()))
    odd = "".join(f"\nNot as planned: {k}: {n}." for k, n in r["unexpected"].items())
    rows = [(k, "ok" if c["ok"] else "FAILED", json.dumps({a: b for a, b in c.items() if a != "ok"})[:160])
            for k, c in r["checks"].items()]  # fmt: skip
    return head + outcomes + "\n" + odd + "\n\n" + md_table(["check", "result", "evidence"], rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("requests", 500), ("concurrency", 500), ("workers", 3), ("steps", 2)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--stage-timeout-s", type=float, default=120.0, help="the shipped default")
    p.add_argument("--db", choices=["auto", "sqlite", "postgresql"], default="auto")
    p.add_argument("--deadline-s", type=float, default=900.0, help="the whole run, set-up included")
    p.add_argument("--name", default="load_generate", help="results file stem")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="consentry-load-"))
    info = machine_info()
    result = run_under_deadline(run, args, work)
    result["machine"], result["data_dir"] = info, str(work) if args.keep else None
    print(markdown(result))
    print("written {} and {}".format(*write_results(args.name, result, markdown(result))))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["all_checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
