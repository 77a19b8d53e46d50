"""Health probes on an audit log of 1,000,000 events: liveness and readiness vs the full chain
verification that ``/health`` used to run on every call.

Builds a SQLite database with N properly chained events and a signed head (the real schema and
hash chain, written in bulk), serves the real app in-process (fakes for the face and diffusion
models, which readiness only asks "loaded?"), and times ``GET /health/live`` and
``GET /health/ready`` over HTTP, then one ``audit verify``. Ratios are from this one run.

    .venv/bin/python bench/health_probe.py [--events 1000000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import Timing, machine_info, md_table, write_results
from litestar.testing import AsyncTestClient
from PIL import Image
from sqlalchemy import Table

from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.storage.tables import AuditEvent, AuditHead
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings
from consentry.provenance.audit import GENESIS, seal
from consentry.provenance.audit_signing import AuditSigner
from consentry.provenance.keys import init_dev_keys

BATCH = 20_000


async def fill(settings: Settings, events: int) -> float:
    """Append ``events`` chained events in bulk and sign the head; returns seconds taken."""
    start = time.perf_counter()
    gate = await open_gate(
        settings, analyzer=FingerprintAnalyzer(), generator=PhotoGenerator(Image.new("RGB", (8, 8)))
    )
    signer = AuditSigner.load_or_create(settings.keys_dir)
    prev, ts = GENESIS, datetime.now(UTC).isoformat()
    table = AuditEvent.__table__
    assert isinstance(table, Table)  # typed as any FromClause
    try:
        for first in range(1, events + 1, BATCH):
            rows: list[dict[str, Any]] = []
            for seq in range(first, min(first + BATCH, events + 1)):
                body = {"request_id": f"gen_{seq:016x}", "decision": "released", "n": seq}
                ev = seal(seq=seq, ts=ts, kind="generation.released", body=body, prev=prev)
                rows.append(
                    {
                        "seq": ev.seq,
                        "ts": ev.ts,
                        "kind": ev.kind,
                        "body": ev.body,
                        "prev_hash": ev.prev_hash,
                        "hash": ev.hash,
                    }
                )
                prev = ev.hash
            async with gate.db.session() as session, session.begin():
                await session.execute(table.insert(), rows)
        async with gate.db.session() as session, session.begin():
            session.add(AuditHead(id=1, seq=events, hash=prev, signature=signer.sign(events, prev)))
    finally:
        await gate.close()
    return time.perf_counter() - start


async def probe(settings: Settings, repeats: int) -> dict[str, Any]:
    async def factory(s: Settings) -> Gate:
        return await open_gate(
            s, analyzer=FingerprintAnalyzer(), generator=PhotoGenerator(Image.new("RGB", (8, 8)))
        )

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    out: dict[str, Any] = {}
    async with AsyncTestClient(app=app) as client:
        for path in ("/health/live", "/health/ready"):
            samples = []
            for n in range(repeats + 3):
                start = time.perf_counter()
                r = await client.get(path)
                elapsed = (time.perf_counter() - start) * 1000.0
                assert r.status_code == 200, r.text
                if n >= 3:  # the first calls warm up
                    samples.append(elapsed)
            out[path] = Timing(tuple(samples)).summary()
        gate: Gate = app.state["consentry_gate"]
        start = time.perf_counter()
        report = await gate.audit.verify()
        out["audit_verify_s"] = round(time.perf_counter() - start, 2)
        out["audit_verify_ok"] = report.ok
        out["audit_events"] = report.events
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        init_dev_keys(data / "keys")
        settings = Settings(data_dir=data, device="cpu")
        fill_s = asyncio.run(fill(settings, args.events))
        result = asyncio.run(probe(settings, args.repeats))
        db_mb = (data / "consentry.db").stat().st_size / 2**20
    live, ready = result["/health/live"], result["/health/ready"]
    verify_ms = result["audit_verify_s"] * 1000.0
    rows = [
        ["GET /health/live", f"{live['median_ms']:.2f}", f"{live['p95_ms']:.2f}"],
        ["GET /health/ready", f"{ready['median_ms']:.2f}", f"{ready['p95_ms']:.2f}"],
        ["full chain verification (old /health, now `audit verify`)", f"{verify_ms:.0f}", "(one run)"],
    ]
    md = (
        f"# Health probes at {args.events:,} audit events\n\n"
        + md_table(["probe", "median ms", "p95 ms"], rows)
        + f"\n\nreadiness is {verify_ms / ready['median_ms']:,.0f}x cheaper than the full verification "
        f"(same run); chain verified ok={result['audit_verify_ok']} over {result['audit_events']:,} events; "
        f"database {db_mb:.0f} MiB, filled in {fill_s:.0f} s.\n"
    )
    data_out = {
        "events": args.events,
        "repeats": args.repeats,
        "fill_s": round(fill_s, 1),
        "db_mib": round(db_mb),
        **result,
        "machine": info,
    }
    json_path, md_path = write_results("health_probe", data_out, md)
    print(md)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
