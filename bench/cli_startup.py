"""Wall time of ``consentry`` commands that load no model, each run in its own process.

Goal (issue 12, item 6): ``--help``, ``verify``, ``watermark embed/decode``, ``audit
verify/export``, ``grant``, ``revoke``, ``principal add/revoke-key``, ``keys
init/rotate-watermark`` and ``adapters list/delete`` start and finish in <= 1 s, median of 5
runs. Each sample is one ``subprocess.run`` of the installed console script (the interpreter
start, the imports, the command, the exit), on a fresh SQLite deployment in a temporary folder
(``CONSENTRY_DATA_DIR``, CPU device, no configuration file). Commands that need something to act
on get it in an untimed set-up; where a cheap failure is the realistic case (an unreadable file,
an unknown id) the exit code says so. For each command the heavy libraries it imported are
recorded from one extra run (``-X importtime``), to show which paths still pull torch in.

The commands are timed round-robin (run i of every command, then run i + 1, ...), so a load
spike on the shared machine hits all of them alike instead of one command's five runs; the
load average is recorded at the start and the end. Run it when ``uptime`` shows the lowest load
you can find: on 2 cores a load of 2 already doubles a 0.8 s command's wall time.

    .venv/bin/python bench/cli_startup.py [--repeats 5] [--results-dir bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, goal, goal_text, machine_info, md_table, measure_interleaved, write_results

GOAL_MS = 1000.0
CENSUS_RUN = -2  # run number of the -X importtime run (the warm-up is -1)
HEAVY = ("torch", "diffusers", "transformers", "cv2", "facenet_pytorch", "skimage")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    argv: Callable[[int], list[str]]  # run number (negative: warm-up) -> arguments
    expect: int  # the exit code the run must end with
    note: str = ""


def consentry() -> list[str]:
    script = Path(sys.executable).with_name("consentry")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "consentry.gateway.cli"]


class Deployment:
    """A throw-away data folder; ``run`` executes one command there and returns its result."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
        self.env |= {"CONSENTRY_DATA_DIR": str(root / "data"), "CONSENTRY_DEVICE": "cpu"}

    def run(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, python_flags: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*consentry(), *argv]
        if python_flags:
            cmd = [sys.executable, *python_flags, "-m", "consentry.gateway.cli", *argv]
        return subprocess.run(
            cmd, cwd=self.root, env=env or self.env, capture_output=True, text=True, timeout=600
        )

    def ok(self, argv: Sequence[str]) -> str:
        done = self.run(argv)
        if done.returncode != 0:
            raise SystemExit(f"set-up step {' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done.stdout


def set_up(dep: Deployment, repeats: int) -> dict[str, Any]:
    from PIL import Image

    dep.ok(["keys", "init"])
    Image.new("RGB", (256, 256), (120, 140, 160)).save(dep.root / "plain.png")
    (dep.root / "notes.txt").write_text("not an image\n")
    dep.ok(["watermark", "embed", "plain.png", "marked.png", "--payload", "00112233445566aa"])
    # One API key per run of `principal revoke-key`: warm-up, timed runs, the import census.
    keys = [
        json.loads(dep.ok(["principal", "add", f"holder{i}", "--role", "requester"]))["key_id"]
        for i in range(repeats + 2)
    ]
    return {"keys": keys}


def commands(state: dict[str, Any]) -> list[Command]:
    keys: list[str] = state["keys"]
    return [
        Command("--help", lambda i: ["--help"], 0),
        Command("keys init", lambda i: ["keys", "init"], 0, "fresh data folder per run"),
        Command("keys rotate-watermark", lambda i: ["keys", "rotate-watermark"], 0),
        Command("watermark embed", lambda i: ["watermark", "embed", "plain.png", "out.png"], 0),
        Command("watermark decode", lambda i: ["watermark", "decode", "marked.png"], 0),
        Command(
            "watermark decode (not an image)",
            lambda i: ["watermark", "decode", "notes.txt"],
            2,
            "unreadable file",
        ),
        Command("verify", lambda i: ["verify", "marked.png"], 0),
        Command("verify (no such file)", lambda i: ["verify", "missing.png"], 2, "unreadable file"),
        Command("audit verify", lambda i: ["audit", "verify"], 0),
        Command("audit export", lambda i: ["audit", "export", "--out", "audit.jsonl"], 0),
        Command(
            "grant",
            lambda i: [
                "grant",
                "idn_unknown",
                "--principal",
                "holder0",
                "--purpose",
                "portrait",
                "--attested-by",
                "bench",
            ],
            2,
            "unknown identity: the gate is opened and asked",
        ),
        Command("revoke", lambda i: ["revoke", "gnt_unknown"], 2, "unknown grant: the gate is asked"),
        Command("principal add", lambda i: ["principal", "add", f"timed{i + 2}", "--role", "auditor"], 0),
        Command("principal revoke-key", lambda i: ["principal", "revoke-key", keys[i + 2]], 0),
        Command("adapters list", lambda i: ["adapters", "list"], 0),
        Command(
            "adapters delete",
            lambda i: ["adapters", "delete", "adp_unknown"],
            2,
            "unknown adapter: the gate is asked",
        ),
    ]


def heavy_imports(dep: Deployment, cmd: Command, env: dict[str, str]) -> list[str]:
    """Heavy top-level packages one run of ``cmd`` imported (from ``-X importtime``)."""
    done = dep.run(cmd.argv(CENSUS_RUN), env=env, python_flags=["-X", "importtime"])
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)", done.stderr, re.M))
    return sorted(h for h in HEAVY if h in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    info = machine_info()
    rows: list[tuple[object, ...]] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="consentry-cli-bench-") as tmp:
        dep = Deployment(Path(tmp))
        state = set_up(dep, args.repeats)
        cmds = commands(state)

        def env_for(cmd: Command, i: int) -> dict[str, str]:
            if cmd.name != "keys init":
                return dep.env
            return dep.env | {"CONSENTRY_DATA_DIR": str(dep.root / f"fresh{i + 10}")}

        def once(cmd: Command) -> Callable[[int], None]:
            def run(i: int) -> None:
                done = dep.run(cmd.argv(i), env=env_for(cmd, i))
                if done.returncode != cmd.expect:
                    raise SystemExit(
                        f"{cmd.name}: exit {done.returncode}, expected {cmd.expect}: {done.stderr[-2000:]}"
                    )

            return run

        timings = measure_interleaved({c.name: once(c) for c in cmds}, repeats=args.repeats, warmup=1)
        for cmd in cmds:
            timing = timings[cmd.name]
            heavy = heavy_imports(dep, cmd, env_for(cmd, CENSUS_RUN))
            g = goal(round(timing.median_ms, 1), GOAL_MS, at_most=True)
            results.append(
                {
                    "command": cmd.name,
                    "argv": cmd.argv(0),
                    "exit": cmd.expect,
                    "note": cmd.note,
                    **timing.summary(),
                    "heavy_imports": heavy,
                    "goal": g,
                }
            )
            rows.append(
                (
                    cmd.name,
                    cmd.expect,
                    round(timing.median_ms),
                    round(timing.min_ms),
                    ", ".join(heavy) or "none",
                    "met" if g["met"] else "NOT met",
                )
            )
            print(
                f"{cmd.name:32} exit {cmd.expect}  {goal_text(g, 'ms')}  heavy: {heavy or 'none'}", flush=True
            )
    table = md_table(["command", "exit", "median ms", "min ms", "heavy imports", "<= 1000 ms"], rows)
    met = sum(1 for r in results if r["goal"]["met"])
    markdown = (
        "# `consentry` start-up: commands that load no model\n\n"
        f"Wall time of one process per run, median of {args.repeats} (after 1 warm-up; commands "
        "interleaved run by run), fresh SQLite "
        f"deployment; goal <= {GOAL_MS:g} ms: met by {met} of {len(results)}.\n\n"
        '"heavy imports": which of ' + ", ".join(HEAVY) + " the command imported.\n\n" + table
    )
    data = {
        "benchmark": "cli_startup",
        "settings": {"repeats": args.repeats, "warmup": 1, "runner": consentry(), "goal_ms": GOAL_MS},
        "machine": info,
        "results": results,
    }
    json_path, md_path = write_results("cli_startup", data, markdown, args.results_dir)
    print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
