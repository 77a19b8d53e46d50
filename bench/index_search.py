"""IdentityIndex at one million templates: query latency, exactness, and what a face costs.

200,000 identities x 5 random unit templates (128-d float32, seeded), rows shuffled so an
identity's templates are not adjacent. Per device (CPU always, CUDA when present), timed
round-robin so every variant sees the same machine load:

- ``current``: ``IdentityIndex.scores`` for one query face (median, p95);
- ``proposed`` (CPU): ``ProposedIndex`` below: rows sorted by identity at build time, the
  product in numpy (OpenBLAS, about twice as fast as torch's MKL path for one query here) and
  the per-identity maximum by ``np.maximum.reduceat`` over contiguous runs; on CUDA the current
  torch path is kept;
- ``current_1_thread``: the same with torch limited to one thread for the call;
- ``floor``: one plain torch float32 matrix-vector product over the same matrix (on CPU the
  search is memory-bound: 512 MB read per query);
- per face: ``scores`` plus the two look-ups the face rules make (``of(subject)``,
  ``best(exclude=subject)``), today's ``IdentityScores`` (Python loops) against ``FastLookups``
  (numpy; checked to return exactly what today's return);
- exactness of each index against an independent numpy brute force (identity-grouped,
  unshuffled matrix) on 300 queries: same best identity, scores within 1e-5.

Run: .venv/bin/python bench/index_search.py   (about 2 min and 3 GB of memory here)
Writes bench/results/index_search.{json,md}.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS_DIR,
    goal,
    goal_text,
    machine_info,
    md_table,
    measure_interleaved,
    repo_on_path,
    write_results,
)

repo_on_path()
import torch  # noqa: E402

from consentry.detectors.index import IdentityIndex, IdentityScores, normalise  # noqa: E402

GOALS_MS = {"cpu": 60.0, "cuda": 2.0}
TOLERANCE = 1e-5


class ProposedIndex:
    """CPU variant of ``IdentityIndex`` with the same ``scores`` contract (and column order)."""

    def __init__(self, identity_ids: Sequence[str], templates: np.ndarray) -> None:
        self.identities: tuple[str, ...] = tuple(dict.fromkeys(identity_ids))
        self.columns = {identity: i for i, identity in enumerate(self.identities)}
        owner = np.fromiter((self.columns[i] for i in identity_ids), np.int64, len(identity_ids))
        order = np.argsort(owner, kind="stable")  # each identity's rows become one contiguous run
        self._templates = normalise(templates[order])
        self._starts = np.searchsorted(owner[order], np.arange(len(self.identities)))

    def scores(self, queries: np.ndarray) -> IdentityScores:
        sims = normalise(queries) @ self._templates.T  # numpy: OpenBLAS gemv/gemm
        return IdentityScores(self.identities, np.maximum.reduceat(sims, self._starts, axis=1))


class FastLookups:
    """Proposed ``IdentityScores.best`` / ``of``: numpy instead of a Python loop per identity.

    Same results: ``np.argmax`` returns the first maximum as the loop does, and nothing at or
    below -1 counts as a match. ``columns`` is built once per index, not per query.
    """

    def __init__(self, scores: IdentityScores, columns: dict[str, int]) -> None:
        self.scores, self.identities, self.columns = scores.scores, scores.identities, columns

    def best(self, row: int, exclude: str | None = None) -> tuple[str | None, float]:
        values = self.scores[row]
        col = self.columns.get(exclude) if exclude is not None else None
        if col is not None:
            values = values.copy()
            values[col] = -np.inf
        if values.size == 0:
            return None, -1.0
        top = int(np.argmax(values))
        return (self.identities[top], float(values[top])) if values[top] > -1.0 else (None, -1.0)

    def of(self, row: int, identity: str) -> float:
        col = self.columns.get(identity)
        return -1.0 if col is None else float(self.scores[row, col])


def make_world(identities: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Grouped unit templates (identity i owns rows i*per..), a shuffle, and shuffled owner ids."""
    rng = np.random.default_rng(seed)
    grouped = rng.standard_normal((identities * per, 128), dtype=np.float32)
    grouped /= np.linalg.norm(grouped, axis=1, keepdims=True)
    perm = rng.permutation(len(grouped))
    return grouped, perm, [f"idn_{i // per:07d}" for i in perm]


def make_queries(grouped: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Mostly probes near an enrolled template (cosine ~0.85, like a real face), some strangers."""
    rng = np.random.default_rng(seed + 1)
    probes = count * 5 // 6
    near = grouped[rng.integers(0, len(grouped), probes)]
    near = near + 0.055 * rng.standard_normal(near.shape, dtype=np.float32)
    return normalise(np.concatenate([near, rng.standard_normal((count - probes, 128), dtype=np.float32)]))


def check_exact(index: Any, grouped: np.ndarray, per: int, queries: np.ndarray) -> dict[str, Any]:
    """``index.scores`` against a numpy brute force on the identity-grouped matrix."""
    order = np.array([int(name[4:]) for name in index.identities])  # index column -> identity
    max_diff, mismatches, ties = 0.0, 0, 0
    for start in range(0, len(queries), 25):
        q = queries[start : start + 25]
        ref = (q @ grouped.T).reshape(len(q), -1, per).max(axis=2)[:, order]
        got = index.scores(q).scores
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        top2 = np.sort(ref, axis=1)[:, -2:]
        for row in np.flatnonzero(got.argmax(1) != ref.argmax(1)):
            tie = top2[row, 1] - top2[row, 0] <= TOLERANCE  # then either answer is exact
            ties, mismatches = ties + int(tie), mismatches + int(not tie)
    return {
        "queries": len(queries),
        "max_abs_score_diff": max_diff,
        "best_identity_mismatches": mismatches,
        "best_identity_differs_on_exact_ties": ties,
        "identical": mismatches == 0 and max_diff <= TOLERANCE,
    }


def lookups_identical(scores: IdentityScores, fast: FastLookups) -> bool:
    """FastLookups returns exactly what today's IdentityScores returns, row by row."""
    for row in range(scores.scores.shape[0]):
        top = scores.best(row)[0]  # excluding the best makes best() find the runner-up
        assert top is not None  # the index is never empty here
        for subject in (top, scores.identities[row * 7919 % len(scores.identities)]):
            same = scores.of(row, subject) == fast.of(row, subject)
            if not same or scores.best(row, exclude=subject) != fast.best(row, exclude=subject):
                return False
        if scores.best(row) != fast.best(row):
            return False
    return fast.of(0, "not-enrolled") == scores.of(0, "not-enrolled")


def bench_device(
    device: str, owners: list[str], shuffled: np.ndarray, grouped: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device == "cuda" else None
    t0 = time.perf_counter()
    current = IdentityIndex(owners, shuffled, device=device)
    build = {"current_s": round(time.perf_counter() - t0, 2)}
    proposed: Any = current
    if device == "cpu":
        t0 = time.perf_counter()
        proposed = ProposedIndex(owners, shuffled)
        build["proposed_s"] = round(time.perf_counter() - t0, 2)
    columns = {name: i for i, name in enumerate(current.identities)}
    queries = make_queries(grouped, args.check_queries, args.seed)
    singles = [queries[i % len(queries)][None] for i in range(args.repeats)]
    templates = torch.from_numpy(shuffled).to(device)  # for the floor; shares memory on CPU
    queries_dev = [torch.from_numpy(q).to(device) for q in singles]

    def face(index: Any, fast: bool) -> Any:
        def run(i: int) -> object:
            s = index.scores(singles[i])
            look = FastLookups(s, columns) if fast else s
            subject = s.identities[i]
            return look.of(0, subject), look.best(0, exclude=subject)

        return run

    def one_thread(i: int) -> object:
        # torch's default uses every core; on a shared 2-core host a busy core stalls each op.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return current.scores(singles[i])
        finally:
            torch.set_num_threads(threads)

    variants = {
        "current": lambda i: current.scores(singles[i]),
        "current_1_thread": one_thread,
        "proposed": lambda i: proposed.scores(singles[i]),
        "floor": lambda i: queries_dev[i] @ templates.T,
        "face_today": face(current, fast=False),
        "face_proposed": face(proposed, fast=True),
    }
    timed = measure_interleaved(variants, repeats=args.repeats, warmup=2, sync=sync)
    sample = current.scores(queries[:8])
    fast = FastLookups(sample, columns)
    subject = sample.identities[-1]  # the last column: the loop's worst case
    lookups = measure_interleaved(
        {
            "lookups_today": lambda i: (sample.of(i % 8, subject), sample.best(i % 8, exclude=subject)),
            "lookups_proposed": lambda i: (fast.of(i % 8, subject), fast.best(i % 8, exclude=subject)),
        },
        repeats=max(10, args.repeats // 5),
    )
    exact = {"current": check_exact(current, grouped, args.per_identity, queries)}
    if proposed is not current:
        exact["proposed"] = check_exact(proposed, grouped, args.per_identity, queries)
    return {
        "device": device,
        "proposed_index": "ProposedIndex (numpy, sorted rows)" if proposed is not current else "current",
        "build": build,
        "peak_rss_gib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "ms": {name: t.summary() for name, t in (timed | lookups).items()},
        "fast_lookups_identical_to_today": lookups_identical(sample, fast),
        "exactness": exact,
        "goal_current": goal(timed["current"].median_ms, GOALS_MS[device], at_most=True),
        "goal_proposed": goal(timed["proposed"].median_ms, GOALS_MS[device], at_most=True),
    }


def spread(t: dict[str, float]) -> str:
    return f"{t['median_ms']:.4g} / {t['p95_ms']:.4g} / {t['min_ms']:.3g}"


def table_row(r: dict[str, Any]) -> list[object]:
    ms = r["ms"]
    ok = all(e["identical"] for e in r["exactness"].values())
    diff = max(e["max_abs_score_diff"] for e in r["exactness"].values())
    return [
        r["device"],
        spread(ms["current"]),
        spread(ms["current_1_thread"]),
        spread(ms["proposed"]),
        spread(ms["floor"]),
        ms["face_today"]["median_ms"],
        ms["face_proposed"]["median_ms"],
        f"{ms['lookups_today']['median_ms']:.4g} -> {ms['lookups_proposed']['median_ms']:.2g}",
        f"{'yes' if ok else 'NO'} (max diff {diff:.1e})",
    ]


def main(args: argparse.Namespace) -> None:
    info = machine_info()
    grouped, perm, owners = make_world(args.identities, args.per_identity, args.seed)
    shuffled = grouped[perm]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [bench_device(d, owners, shuffled, grouped, args) for d in devices]
    cuda = next((r for r in results if r["device"] == "cuda"), None)
    goals = {
        "cpu_median_ms": results[0]["goal_current"],
        "cpu_median_ms_proposed": results[0]["goal_proposed"],
    }
    goals["cuda_median_ms"] = cuda["goal_current"] if cuda else goal(None, GOALS_MS["cuda"], at_most=True)
    data = {
        "benchmark": "index_search",
        "templates": len(shuffled),
        "identities": args.identities,
        "dim": 128,
        "seed": args.seed,
        "repeats": args.repeats,
        "cuda": "measured" if cuda else "not measured: no CUDA device",
        "goals": goals,
        "results": results,
        "machine": info,
    }
    headers = ["device", "current ms (median / p95 / min)", "current, 1 torch thread"]
    headers += ["proposed ms (median / p95 / min)"]
    headers += ["torch matvec floor ms (same)"]
    headers += ["per face today ms", "per face proposed ms", "look-ups ms today -> proposed", "exact"]
    md = (
        f"# IdentityIndex: {len(shuffled):,} templates, {args.identities:,} identities, 128-d\n\n"
        f"{md_table(headers, [table_row(r) for r in results])}\n\n"
        f"- CPU goal, current {goal_text(goals['cpu_median_ms'], 'ms')}; proposed "
        f"{goal_text(goals['cpu_median_ms_proposed'], 'ms')}\n"
        f"- CUDA goal {goal_text(goals['cuda_median_ms'], 'ms')}{'' if cuda else ' (no CUDA device)'}\n"
        "- per face = scores + of(subject) + best(exclude=subject), as the face rules call them; "
        "proposed look-ups return exactly today's results: "
        f"{all(r['fast_lookups_identical_to_today'] for r in results)}\n"
        f"- exact = same best identity and scores within {TOLERANCE:g} of a numpy brute force "
        f"on {args.check_queries} queries, every index measured"
    )
    json_path, _ = write_results("index_search", data, md, Path(args.results_dir))
    print(md)
    print(f"wrote {json_path}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--identities", type=int, default=200_000)
    p.add_argument("--per-identity", type=int, default=5)
    p.add_argument("--repeats", type=int, default=120, help="interleaved runs per variant and device")
    p.add_argument("--check-queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    return p.parse_args()


if __name__ == "__main__":
    main(parse())
