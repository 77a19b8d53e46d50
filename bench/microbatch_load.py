"""Micro-batching of face analysis under load: ``bench/load_generate.py`` with the window off and
on, alternating, in one invocation, with several requests admitted into the flow at once (so face
stages of different requests can overlap). The table compares p50/p99 latency and throughput.

Run: .venv/bin/python bench/microbatch_load.py [--requests 60] [--rounds 2] [--window-ms 20]
Writes bench/results/microbatch_load.{json,md}; the load runs' own results go to
bench/results/microbatch_{off,on}_{round}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import machine_info, md_table, write_results

HERE = Path(__file__).resolve().parent


def load_run(name: str, window_ms: float, args: argparse.Namespace) -> dict[str, Any]:
    env = os.environ | {
        "CONSENTRY_FACE_BATCH_WINDOW_MS": str(window_ms),
        "CONSENTRY_GENERATION_CONCURRENCY": str(args.concurrency),
    }
    command = [sys.executable, str(HERE / "load_generate.py"), "--requests", str(args.requests)]
    command += ["--workers", "1", "--db", "sqlite", "--name", name, "--deadline-s", str(args.deadline_s)]
    subprocess.run(command, cwd=HERE, env=env, check=False, timeout=args.deadline_s + 60)
    result: dict[str, Any] = json.loads((HERE / "results" / f"{name}.json").read_text())
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--window-ms", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=4, help="generation_concurrency of the server")
    p.add_argument("--deadline-s", type=float, default=600.0)
    args = p.parse_args()
    start = machine_info()
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for n in range(args.rounds):
        for label, window in (("off", 0.0), ("on", args.window_ms)):
            runs[label].append(load_run(f"microbatch_{label}_{n}", window, args))
    rows, summary = [], {}
    for label, results in runs.items():
        ok = all(r["all_checks_ok"] for r in results)
        p50 = statistics.median(r["latency_ms"]["p50"] for r in results)
        p99 = statistics.median(r["latency_ms"]["p99"] for r in results)
        rps = statistics.median(r["throughput_rps"] for r in results)
        summary[label] = {"p50_ms": p50, "p99_ms": p99, "throughput_rps": rps, "all_checks_ok": ok}
        window = "0 (off)" if label == "off" else f"{args.window_ms:g} ms"
        rows.append([window, f"{p50:.0f}", f"{p99:.0f}", f"{rps:.2f}", "yes" if ok else "NO"])
    ratio = summary["on"]["p50_ms"] / summary["off"]["p50_ms"] if summary["off"]["p50_ms"] else None
    table = md_table(["face_batch_window_ms", "p50 ms", "p99 ms", "req/s", "every check passed"], rows)
    text = (
        f"# Face micro-batching under load\n\n{args.requests} requests at once, `generation_concurrency` "
        f"{args.concurrency}, 1 worker, SQLite, tiny pipeline, real face models; {args.rounds} alternating "
        f"rounds per setting, medians over rounds.\n\n{table}\n\np50 with the window / without: "
        f"{ratio:.3f}\n"
    )
    data = {
        "settings": vars(args),
        "summary": summary,
        "p50_ratio_on_off": ratio,
        "rounds": {k: [r["latency_ms"] | {"rps": r["throughput_rps"]} for r in v] for k, v in runs.items()},
        "machine_start": start,
        "machine": machine_info(),
    }
    write_results("microbatch_load", data, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
