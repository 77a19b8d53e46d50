"""Small helpers shared by the benchmarks: timing, machine description, results files.

The benchmarks are scripts (``python bench/NAME.py``), not a package: Python puts this folder
first on ``sys.path``, so ``from common import ...`` works, and ``repo_on_path`` makes the
project's packages importable without an editable install (the device machine has none).

Every result file records the machine and the load average before and after the run: the
development machines are shared, and a figure taken under load says so.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def repo_on_path() -> None:
    """Make ``detectors`` & co. importable when the project is not pip-installed."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def faces_dir() -> Path:
    """The real test photos: ``$CONSENTRY_FACES_DIR`` (may be relative to the working
    directory, e.g. a git-ignored ``.gpu/faces`` carried to the device machine), else
    ``../shared/faces`` beside the checkout, as for the tests."""
    env = os.environ.get("CONSENTRY_FACES_DIR")
    path = Path(env).resolve() if env else REPO.parent / "shared" / "faces"
    if not path.is_dir():
        raise SystemExit(f"face photos not found at {path}; set CONSENTRY_FACES_DIR")
    return path


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock samples of one repeated measurement, in milliseconds."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95_ms(self) -> float:
        """Nearest-rank 95th percentile: an observed sample, never an interpolation."""
        ordered = sorted(self.samples_ms)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def summary(self) -> dict[str, float | int]:
        return {
            "median_ms": round(self.median_ms, 4),
            "p95_ms": round(self.p95_ms, 4),
            "min_ms": round(self.min_ms, 4),
            "max_ms": round(max(self.samples_ms), 4),
            "runs": len(self.samples_ms),
        }


def one_person_photos(root: Path, count: int) -> tuple[list[Path], Path]:
    """``count`` single-face LFW photos of one person (to enroll or train on), and one more of
    the same person as a reference: the first person, by name, with enough such photos."""
    people: dict[str, list[Path]] = {}
    with (root / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            if row["path"].startswith("lfw/") and row["faces"] == "1":
                people.setdefault(row["person"], []).append(root / row["path"])
    person = sorted(name for name, paths in people.items() if len(paths) > count)[0]
    paths = sorted(people[person])
    return paths[:count], paths[count]


def measure(
    fn: Callable[[int], object],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Time ``fn(i)`` for i in 0..repeats-1 after ``warmup`` untimed calls (``fn(-1)``...).

    ``fn`` gets the run number so callers can feed different inputs each run. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before the clock starts and before it stops, so
    asynchronous GPU work is counted in the run that queued it.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for w in range(warmup):
        fn(-1 - w)
    samples = []
    for i in range(repeats):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn(i)
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    return Timing(tuple(samples))


def measure_interleaved(
    fns: Mapping[str, Callable[[int], object]],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time several variants round-robin (run i of each, rotating who goes first).

    On a shared machine the load changes by the second; variants timed one after the other
    then compare machine states, not code. Interleaved, each sees the same mix.
    """
    names = list(fns)
    for w in range(warmup):
        for name in names:
            fns[name](-1 - w)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if sync is not None:
                sync()
            start = time.perf_counter()
            fns[name](i)
            if sync is not None:
                sync()
            samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def cpu_model() -> str:
    """The CPU's marketing name (``platform.processor()`` is empty on most Linux builds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, cores, torch, CUDA device, load."""
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit or None,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_runtime": torch.version.cuda if cuda else None,
    }


def goal(value: float | None, target: float, *, at_most: bool) -> dict[str, Any]:
    """A goal and whether ``value`` meets it (``met`` is None when nothing was measured)."""
    met = None if value is None else (value <= target if at_most else value >= target)
    return {"target": target, "rule": "<=" if at_most else ">=", "value": value, "met": met}


def goal_text(g: dict[str, Any], unit: str) -> str:
    if g["value"] is None:
        return f"{g['rule']} {g['target']:g} {unit}: not measured"
    verdict = "met" if g["met"] else "NOT met"
    return f"{g['rule']} {g['target']:g} {unit}: {g['value']:.4g} {unit}, {verdict}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats get 4 significant digits."""

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    device = info["cuda_device"] or "no CUDA device"
    return (
        f"{info['cpu_model']}, {info['cpu_cores_usable']} usable cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), {device}; load average {info['load_average_1m']} at start, "
        f"{info.get('load_average_1m_end', '?')} at end; {info['date_utc']}, commit {info['git_commit']}"
    )


def write_results(
    name: str, data: dict[str, Any], markdown: str, results_dir: Path = RESULTS_DIR
) -> tuple[Path, Path]:
    """Write ``NAME.json`` and ``NAME.md``; the load average at the end goes into both."""
    data.setdefault("machine", {})["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown.rstrip() + "\n\n" + machine_line(data["machine"]) + "\n")
    return json_path, md_path
