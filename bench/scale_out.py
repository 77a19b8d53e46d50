"""Scale-out: two ``consentry serve`` replicas on one PostgreSQL, no sticky routing.

One run, one database: first all requests go to replica 1 alone, then the same load is spread
over both replicas (request i to replica i mod 2). Each phase must lose nothing: every request
answered, every answer audited exactly once (distinct ``audit_seq``, the right event), the log
grown by exactly the number of requests, each release with its record and files; the chain
verifies at the end. Then a grant revoked through replica 1 must refuse the very next request
sent to replica 2. Reports req/s and p50/p99 for one and two replicas from the same run.

Run: .venv/bin/python bench/scale_out.py [--requests 500] [--concurrency 500]
Writes bench/results/scale_out.{json,md}. Exit 0 only when every check passed. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from common import machine_info, md_table, write_results
from gateway_proc import cli, run_under_deadline
from load_generate import check, fire, plan, read_db, setup


async def phase(s: dict[str, Any], urls: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    before = (await read_db(s["db_url"], []))[0]
    reqs = plan(args.requests, s["subject"], *s["photos"])
    outs, wall_s = await fire(urls, s["key"], reqs, args.concurrency, args.deadline_s)
    db = await read_db(s["db_url"], [o.audit_seq for o in outs if o.audit_seq is not None])
    checks = check(outs, before, db, work / "data" / "outputs")
    lat = sorted(o.latency_ms for o in outs if o.status is not None)
    pct = {f"p{q}": round(lat[max(0, -(-q * len(lat) // 100) - 1)], 1) for q in (50, 99)} if lat else {}
    return {
        "replicas": len(urls),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(lat) / wall_s, 3),
        "latency_ms": pct,
        "answers_per_replica": dict(
            Counter(urls[o.i % len(urls)].rsplit(":", 1)[1] for o in outs if o.status)
        ),
        "codes": dict(Counter(str(o.code) for o in outs)),
        "checks": checks,
        "ok": all(c["ok"] for c in checks.values()),
    }


async def revocation_crosses_replicas(s: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    head_admin, head_req = {"X-API-Key": s["admin"]}, {"X-API-Key": s["key"]}
    body = {"subject_id": s["subject"], "purpose": "portrait", "prompt": "after the revocation"}
    async with httpx.AsyncClient(timeout=300) as c:
        before = (await c.post(f"{urls[1]}/v1/generate", json=body, headers=head_req)).status_code
        revoked = (await c.post(f"{urls[0]}/v1/grants/{s['grant']}/revoke", headers=head_admin)).status_code
        after = await c.post(f"{urls[1]}/v1/generate", json=body, headers=head_req)
    code = after.json().get("code")
    return {"ok": before == 201 and revoked == 201 and after.status_code == 403 and code == "consent.revoked",
            "before": before, "revoke": revoked, "after": [after.status_code, code]}  # fmt: skip


async def run(args: argparse.Namespace, work: Path, state: dict[str, Any]) -> dict[str, Any]:
    s = await setup(args, work, state, replicas=2)
    urls = [server.url for server in state["servers"]]
    one = await phase(s, urls[:1], args, work)
    two = await phase(s, urls, args, work)
    revocation = await revocation_crosses_replicas(s, urls)
    verify = json.loads(cli(s["env"], work, "audit", "verify", "--json", ok=(0, 4)))
    return {"settings": s["settings"], "startup_s": s["startup_s"], "one_replica": one, "two_replicas": two,
            "revocation": revocation, "chain": verify,
            "all_checks_ok": one["ok"] and two["ok"] and revocation["ok"] and bool(verify["ok"])}  # fmt: skip


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    rows = []
    for key in ("one_replica", "two_replicas"):
        p = r[key]
        failed = [k for k, c in p["checks"].items() if not c["ok"]]
        lat = {q: f"{p['latency_ms'].get(q, 0):.0f}" for q in ("p50", "p99")}
        verdict = "all ok" if not failed else "FAILED: " + ", ".join(failed)
        rows.append([p["replicas"], p["wall_s"], p["throughput_rps"], lat["p50"], lat["p99"], verdict,
                     json.dumps(p["answers_per_replica"])])  # fmt: skip
    ratio = r["two_replicas"]["throughput_rps"] / max(r["one_replica"]["throughput_rps"], 1e-9)
    head = (
        f"# Scale-out: {s['requests']} concurrent requests, one vs two replicas (same run)\n\n"
        f"`consentry serve --workers {s['workers']}` x 2 on {s['host']}, one {s['database']} database, "
        f"tiny pipeline {s['image_size']}² x {s['steps']} steps, {s['concurrency']} in flight, "
        "no sticky routing.\n\n"
    )
    table = md_table(
        ["replicas", "wall s", "req/s", "p50 ms", "p99 ms", "loss/audit checks", "answers by port"], rows
    )
    rev = r["revocation"]
    tail = (
        f"\n\nTwo replicas / one: **{ratio:.2f}x** req/s (on this machine both replicas share the same "
        "CPU cores, so this shows correctness under spread load, not added capacity). Revocation through "
        "replica 1, "
        f"next request on replica 2: {rev['after']} ({'ok' if rev['ok'] else 'FAILED'}). Chain after "
        f"{r['chain']['events']} events: {'verifies' if r['chain']['ok'] else 'BROKEN'}.\n"
    )
    return head + table + tail


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("requests", 500), ("concurrency", 500), ("workers", 1), ("steps", 2)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--stage-timeout-s", type=float, default=120.0)
    p.add_argument("--deadline-s", type=float, default=1500.0)
    args = p.parse_args()
    args.db = "postgresql"
    work = Path(tempfile.mkdtemp(prefix="consentry-scale-"))
    info = machine_info()
    result = run_under_deadline(run, args, work)
    result["machine"] = info
    print(markdown(result))
    print("written {} and {}".format(*write_results("scale_out", result, markdown(result))))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if result["all_checks_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
