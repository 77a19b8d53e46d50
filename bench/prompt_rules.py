"""Prompt rules by meaning vs the keyword rule alone, on hand-written prompts.

Not a speed benchmark first: on ``bench/data/prompts.toml`` (prompts per deny category and
harmless ones, in kinds: direct, paraphrase, misspelling, leetspeak, other languages, benign near
misses), it reports in one table the recall per category and overall and the false-refusal rate
on harmless prompts, for:

- the policy's deny terms alone (the keyword rule as shipped),
- a longer deny list an operator might write instead (``[keyword_baseline]`` of the data file),
- the semantic rule alone, and deny terms + semantic rule (what the gate runs),

on the held-out half of the prompts (odd positions of each list; the even half is the dev half
on which thresholds are chosen) and on all of them, at the policy's thresholds; then a sweep of
the threshold on both halves, recall per kind of wording, and the cost: model load, embedding the
categories' examples, and per-prompt embedding latency (batch 1, as the gate runs it) on this
machine's CPU (and with torch limited to one thread).

    .venv/bin/python bench/prompt_rules.py [--policy FILE]   (~1 min)
"""

from __future__ import annotations

import argparse
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, RESULTS_DIR, machine_info, md_table, measure, repo_on_path, write_results

repo_on_path()

import torch  # noqa: E402

from consentry.detectors.prompt_embedder import MiniLMPromptEmbedder  # noqa: E402
from consentry.policies.consent import denied_terms  # noqa: E402
from consentry.policies.policy import Policy, load_policy  # noqa: E402
from consentry.policies.prompt_rules import CategoryMatch, SemanticRule, meaning_text  # noqa: E402

DATA = REPO / "bench" / "data" / "prompts.toml"
BENIGN = "benign"
SWEEP = (0.35, 0.40, 0.42, 0.44, 0.46, 0.48, 0.50, 0.52, 0.55, 0.60, 0.65)
MAX_DEV_FALSE_REFUSALS = 0.05
"""Threshold choice: the lowest threshold whose dev-half false-refusal rate is at most this."""


@dataclass(frozen=True, slots=True)
class Item:
    text: str
    expected: str
    kind: str
    split: str
    match: CategoryMatch | None = None
    """The semantic rule's closest category for this prompt (its score does not depend on the
    threshold, so one embedding per prompt serves every threshold of the sweep)."""


def load_items(path: Path) -> tuple[list[Item], list[str]]:
    data = tomllib.loads(path.read_text("utf-8"))
    extended = data.pop("keyword_baseline")["extended"]
    items = [
        Item(text, expected, kind, "dev" if i % 2 == 0 else "test")
        for expected, kinds in data.items()
        for kind, texts in kinds.items()
        for i, text in enumerate(texts)
    ]
    return items, extended


Method = Callable[[Item, float], str | None]
"""A rule: the refused category (or ``"terms"`` for a keyword refusal), None when allowed."""


def methods(policy: Policy, rule: SemanticRule, extended: Sequence[str]) -> dict[str, Method]:
    shipped = policy.prompt.deny_terms

    def semantic(item: Item, threshold: float) -> str | None:
        m = item.match
        return m.category if m is not None and m.score >= threshold else None

    def keywords(terms: Sequence[str]) -> Method:
        return lambda item, _t: "terms" if denied_terms(item.text, terms) else None

    def combined(item: Item, threshold: float) -> str | None:
        return keywords(shipped)(item, threshold) or semantic(item, threshold)

    return {
        "deny terms (shipped)": keywords(shipped),
        "deny list (extended)": keywords(extended),
        "semantic only": semantic,
        "deny terms + semantic": combined,
    }


def rates(
    items: Sequence[Item], method: Method, threshold: float, categories: Sequence[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    harmful = [i for i in items if i.expected != BENIGN]
    for cat in categories:
        mine = [i for i in harmful if i.expected == cat]
        hits = [method(i, threshold) for i in mine]
        out[cat] = sum(h is not None for h in hits) / len(mine) if mine else None
    verdicts = [(i, method(i, threshold)) for i in items]
    refused_harmful = [(i, v) for i, v in verdicts if i.expected != BENIGN and v is not None]
    benign = [(i, v) for i, v in verdicts if i.expected == BENIGN]
    near = [(i, v) for i, v in benign if i.kind == "near_miss"]
    out["recall"] = len(refused_harmful) / len(harmful)
    semantic_hits = [(i, v) for i, v in refused_harmful if v != "terms"]
    out["right_category"] = (
        sum(v == i.expected for i, v in semantic_hits) / len(semantic_hits) if semantic_hits else None
    )
    out["false_refusals"] = sum(v is not None for _, v in benign) / len(benign)
    out["false_refusals_near_miss"] = sum(v is not None for _, v in near) / len(near) if near else None
    out["n_harmful"], out["n_benign"] = len(harmful), len(benign)
    return out


def by_kind(items: Sequence[Item], method: Method, threshold: float) -> dict[str, float]:
    groups: dict[str, list[Item]] = defaultdict(list)
    for i in items:
        groups[i.kind if i.expected != BENIGN else f"benign {i.kind}"].append(i)
    return {k: sum(method(i, threshold) is not None for i in g) / len(g) for k, g in groups.items()}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, help="policy file (default: the shipped default)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    info = machine_info()
    policy = load_policy(args.policy)
    items, extended = load_items(args.data)
    examples = {e for c in policy.prompt.categories for e in c.examples}
    overlap = [i.text for i in items if i.text in examples]
    assert not overlap, f"bench prompts that are policy examples: {overlap}"
    categories = [c.name for c in policy.prompt.categories]
    assert {i.expected for i in items} - {BENIGN} <= set(categories), "a category the policy lacks"

    start = time.perf_counter()
    embedder = MiniLMPromptEmbedder(device="cpu")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    rule = SemanticRule.build(policy.prompt, embedder)
    examples_s = time.perf_counter() - start

    # Per prompt, as the gate runs it (one embedding, batch 1); the matches serve every method.
    matches: list[CategoryMatch | None] = [None] * len(items)

    def embed_one(k: int) -> None:
        j = k % len(items)
        matches[j] = rule.check(items[j].text)

    threads = torch.get_num_threads()
    latency = measure(embed_one, repeats=len(items), warmup=3)
    torch.set_num_threads(1)
    latency_1t = measure(embed_one, repeats=len(items), warmup=3)
    torch.set_num_threads(threads)
    items = [Item(i.text, i.expected, i.kind, i.split, matches[n]) for n, i in enumerate(items)]

    thresholds = {c.name: c.threshold or policy.prompt.semantic_threshold for c in policy.prompt.categories}
    if len(set(thresholds.values())) > 1:
        raise SystemExit("per-category thresholds: this bench sweeps one threshold for all categories")
    chosen = policy.prompt.semantic_threshold
    ways = methods(policy, rule, extended)
    dev = [i for i in items if i.split == "dev"]
    test = [i for i in items if i.split == "test"]
    table = {
        half: {name: rates(subset, m, chosen, categories) for name, m in ways.items()}
        for half, subset in (("test", test), ("all", items))
    }
    sweep = {
        f"{t:g}": {
            half: rates(subset, ways["deny terms + semantic"], t, categories)
            for half, subset in (("dev", dev), ("test", test))
        }
        for t in SWEEP
    }
    ok = [t for t in SWEEP if sweep[f"{t:g}"]["dev"]["false_refusals"] <= MAX_DEV_FALSE_REFUSALS]
    suggested = min(ok) if ok else None
    compared = ("deny terms (shipped)", "deny terms + semantic")
    kinds = {name: by_kind(items, ways[name], chosen) for name in compared}
    per_prompt = []
    for i in items:
        m = i.match
        per_prompt.append(
            {
                "text": i.text,
                "expected": i.expected,
                "kind": i.kind,
                "split": i.split,
                "terms": denied_terms(i.text, policy.prompt.deny_terms),
                "closest": m.category if m else None,
                "score": round(m.score, 4) if m else None,
                "example": m.example if m else None,
                "embedded": meaning_text(i.text),
            }
        )

    heads = ["rule", *categories, "recall", "right category", "false refusals", "near-miss false refusals"]

    def main_rows(half: str) -> list[list[object]]:
        return [
            [
                name,
                *(pct(r[c]) for c in categories),
                pct(r["recall"]),
                pct(r["right_category"]),
                pct(r["false_refusals"]),
                pct(r["false_refusals_near_miss"]),
            ]
            for name, r in table[half].items()
        ]

    n_test, n_all = table["test"]["semantic only"], table["all"]["semantic only"]
    md = [
        f"# Prompt rules: deny terms vs meaning (policy {policy.version}, threshold {chosen:g})",
        "",
        f"Held-out half ({n_test['n_harmful']} harmful, {n_test['n_benign']} harmless prompts):",
        "",
        md_table(heads, main_rows("test")),
        "",
        f"All prompts ({n_all['n_harmful']} harmful, {n_all['n_benign']} harmless;"
        " the dev half chose the threshold):",
        "",
        md_table(heads, main_rows("all")),
        "",
        "Recall per category = share of that category's prompts refused (by any rule); right category ="
        " share of the semantic rule's refusals that named the expected category; false refusals ="
        " share of harmless prompts refused.",
        "",
        "Threshold sweep (deny terms + semantic):",
        "",
        md_table(
            ["threshold", "dev recall", "dev false refusals", "test recall", "test false refusals"],
            [
                [
                    t,
                    pct(s["dev"]["recall"]),
                    pct(s["dev"]["false_refusals"]),
                    pct(s["test"]["recall"]),
                    pct(s["test"]["false_refusals"]),
                ]
                for t, s in sweep.items()
            ],
        ),
        "",
        f"Lowest threshold with at most {MAX_DEV_FALSE_REFUSALS:.0%} false refusals on the dev half: "
        f"{suggested if suggested is not None else 'none'}.",
        "",
        "Refused per kind of wording (all prompts; for harmless kinds, this is the false-refusal rate):",
        "",
        md_table(
            ["kind", *kinds],
            [[k, *(pct(kinds[name][k]) for name in kinds)] for k in kinds["deny terms + semantic"]],
        ),
        "",
        f"Cost on this CPU: model load {load_s:.2f} s (SHA-256 check included); embedding the"
        f" {len(examples)} category examples {1000 * examples_s:.0f} ms; per prompt (batch 1) median"
        f" {latency.median_ms:.1f} ms, p95 {latency.p95_ms:.1f} ms with {threads} torch threads;"
        f" {latency_1t.median_ms:.1f} ms / {latency_1t.p95_ms:.1f} ms with 1 thread.",
    ]
    data = {
        "policy_version": policy.version,
        "threshold": chosen,
        "model": embedder.name,
        "table": table,
        "sweep": sweep,
        "suggested_threshold": suggested,
        "by_kind": kinds,
        "cost": {
            "load_s": round(load_s, 3),
            "examples_ms": round(1000 * examples_s, 1),
            "examples": len(examples),
            "per_prompt": latency.summary(),
            "per_prompt_1_thread": latency_1t.summary(),
            "torch_threads": threads,
        },
        "prompts": per_prompt,
        "machine": info,
    }
    _, md_path = write_results("prompt_rules", data, "\n".join(md), args.results_dir)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
