"""Charts drawn on the server as SVG: no chart library, no script, nothing fetched.

Every text that reaches the SVG (codes, dates) is escaped here; the templates insert the result
as markup.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import datetime, timedelta

from markupsafe import Markup

from consentry.gateway.storage.audit_queries import RELEASED_KIND

W, H = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40
RELEASED_COLOUR = "#2e7d32"
PALETTE = ("#c62828", "#ef6c00", "#6a1b9a", "#1565c0", "#ad1457", "#5d4037", "#00838f", "#9e9d24", "#455a64")


def bucket_labels(since: datetime, until: datetime, chars: int) -> list[str]:
    """Every day (``chars`` 10) or hour (13) from ``since`` to ``until``, as the log spells it."""
    step = timedelta(days=1) if chars == 10 else timedelta(hours=1)
    moment = since.replace(minute=0, second=0, microsecond=0)
    if chars == 10:
        moment = moment.replace(hour=0)
    out = []
    while moment < until:
        out.append(moment.isoformat()[:chars])
        moment += step
    return out


def series(
    buckets: list[tuple[str, str, str, int]], labels: list[str]
) -> tuple[list[str], dict[str, list[int]]]:
    """Counts per series (``released``, then each refusal code, most frequent first) per label."""
    index = {label: i for i, label in enumerate(labels)}
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(labels))
    for bucket, kind, code, n in buckets:
        if bucket in index:
            counts["released" if kind == RELEASED_KIND else code][index[bucket]] += n
    refusals = sorted((k for k in counts if k != "released"), key=lambda k: (-sum(counts[k]), k))
    names = (["released"] if "released" in counts else []) + refusals
    return names, dict(counts)


def colour(name: str, names: list[str]) -> str:
    if name == "released":
        return RELEASED_COLOUR
    refusals = [n for n in names if n != "released"]
    return PALETTE[refusals.index(name) % len(PALETTE)]


def _nice_max(value: float) -> float:
    for m in (1, 2, 5):
        for p in range(0, 12):
            if m * 10**p >= value:
                return float(m * 10**p)
    return value


def _axis(top: float, labels: list[str], fmt: str = "{:.0f}") -> list[str]:
    plot_h = H - TOP - BOTTOM
    out = [
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{plot_h}" fill="none" stroke="#999"/>'
    ]
    for k in range(5):
        value = top * k / 4
        y = H - BOTTOM - plot_h * k / 4
        out.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(fmt.format(value))}</text>'
        )
    every = max(1, len(labels) // 10)
    slot = (W - LEFT - RIGHT) / max(len(labels), 1)
    for i, label in enumerate(labels):
        if i % every == 0:
            x = LEFT + slot * (i + 0.5)
            short = label[5:] if len(label) == 10 else label[11:] + "h"
            out.append(
                f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{html.escape(short)}</text>'
            )
    return out


def _svg(parts: list[str], title: str) -> Markup:
    body = "".join(parts)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" class="chart" '
        f'font-size="11" font-family="sans-serif"><title>{html.escape(title)}</title>{body}</svg>'
    )


def stacked_bars(names: list[str], counts: dict[str, list[int]], labels: list[str], title: str) -> Markup:
    """Bars per bucket, one segment per series, with a tooltip per segment."""
    totals = [sum(counts[n][i] for n in names) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0) or 1)
    plot_h = H - TOP - BOTTOM
    slot = (W - LEFT - RIGHT) / max(len(labels), 1)
    parts = _axis(top, labels)
    for i, label in enumerate(labels):
        y = float(H - BOTTOM)
        for name in names:
            n = counts[name][i]
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            tip = html.escape(f"{label} {name}: {n}")
            parts.append(
                f'<rect x="{LEFT + slot * i + slot * 0.1:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                f'height="{h:.1f}" fill="{colour(name, names)}"><title>{tip}</title></rect>'
            )
    return _svg(parts, title)


def rate_line(names: list[str], counts: dict[str, list[int]], labels: list[str], title: str) -> Markup:
    """The share of generation requests refused per bucket (a gap where there were none)."""
    plot_h = H - TOP - BOTTOM
    slot = (W - LEFT - RIGHT) / max(len(labels), 1)
    parts = _axis(100.0, labels, "{:.0f}%")
    points = []
    for i, label in enumerate(labels):
        total = sum(counts[n][i] for n in names)
        if not total:
            continue
        refused = total - (counts["released"][i] if "released" in counts else 0)
        rate = 100.0 * refused / total
        x, y = LEFT + slot * (i + 0.5), H - BOTTOM - plot_h * rate / 100
        points.append(f"{x:.1f},{y:.1f}")
        tip = html.escape(f"{label}: {rate:.1f}% refused ({refused} of {total})")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#c62828"><title>{tip}</title></circle>')
    if len(points) > 1:
        parts.append(f'<polyline fill="none" stroke="#c62828" stroke-width="2" points="{" ".join(points)}"/>')
    return _svg(parts, title)
