"""A self-contained HTML report of a calibration run: tables plus two hand-drawn SVG charts.

No plotting library and no external assets (fonts, scripts, stylesheets): the file opens
offline and can be archived next to the configuration it justified. Charts: the ROC curve
(TAR against FAR on a log axis, which is where a consent gate operates) and the genuine and
impostor score histograms, each normalised to its own count because impostor pairs outnumber
genuine ones about ten to one.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from consentry.detectors.calibration_run import CalibrationResult
from consentry.policies import codes
from consentry.policies.errors import ConsentryError

W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 50  # plot margins in px
GENUINE, IMPOSTOR, BEST, CHOSEN, CURRENT = "#1b9e77", "#d95f02", "#7570b3", "#000000", "#999999"
MAX_ERRORS_SHOWN = 25


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """Maps data coordinates to SVG pixels inside the plot margins."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float]) -> None:
        self.x, self.y = x, y

    def px(self, x: float) -> float:
        return LEFT + (x - self.x[0]) / (self.x[1] - self.x[0]) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y[0]) / (self.y[1] - self.y[0]) * (H - TOP - BOTTOM)

    def polyline(self, xs: Iterable[float], ys: Iterable[float], color: str, width: float = 2) -> str:
        pts = " ".join(f"{self.px(a):.1f},{self.py(b):.1f}" for a, b in zip(xs, ys, strict=True))
        return f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{pts}"/>'

    def vline(self, x: float, color: str, label: str, dash: str = "6 3") -> str:
        px = self.px(x)
        return (
            f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{H - BOTTOM}" stroke="{color}" '
            f'stroke-dasharray="{dash}"><title>{html.escape(label)}</title></line>'
        )

    def axes(
        self, xticks: Sequence[tuple[float, str]], yticks: Sequence[tuple[float, str]], xlab: str, ylab: str
    ) -> str:
        parts = [
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
            'fill="none" stroke="#444"/>'
        ]
        for x, text in xticks:
            px = self.px(x)
            parts.append(
                f'<line x1="{px:.1f}" y1="{H - BOTTOM}" x2="{px:.1f}" y2="{H - BOTTOM + 5}" stroke="#444"/>'
            )
            parts.append(f'<text x="{px:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{text}</text>')
        for y, text in yticks:
            py = self.py(y)
            parts.append(f'<line x1="{LEFT - 5}" y1="{py:.1f}" x2="{LEFT}" y2="{py:.1f}" stroke="#444"/>')
            parts.append(f'<text x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end">{text}</text>')
        parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">{xlab}</text>')
        mid = (TOP + H - BOTTOM) / 2
        parts.append(f'<text transform="translate(16,{mid}) rotate(-90)" text-anchor="middle">{ylab}</text>')
        return "".join(parts)


def _svg(body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'font-family="sans-serif" font-size="12" role="img"><title>{html.escape(title)}</title>{body}</svg>'
    )


def roc_svg(result: CalibrationResult) -> str:
    """TAR against log10(FAR). Points with FAR 0 are drawn on the left edge of the axis."""
    roc = result.roc
    n_imp = result.scores.impostor.size
    x_lo = float(min(-4, math.floor(math.log10(1.0 / n_imp))))
    far_floor = 10**x_lo
    xs = np.log10(np.maximum(roc.far, far_floor))
    # The staircase's corners: the first and last point of every run of equal FAR.
    edge = xs[1:] != xs[:-1]
    keep = np.concatenate([[True], edge]) | np.concatenate([edge, [True]])
    # Zoom the TAR axis to what is above the left edge (the TAR at FAR 0), clipping below it.
    y_lo = min(0.9, math.floor(10 * float(roc.tar[roc.far == 0].max())) / 10)
    xs, ys = xs[keep], np.maximum(roc.tar[keep], y_lo)
    f = _Frame((x_lo, 0.0), (y_lo, 1.0))
    body = [
        f.axes(
            [(float(e), f"1e{e}") for e in range(int(x_lo), 1)],
            [(t, f"{t:.2f}") for t in _ticks(y_lo, 1.0)],
            "false accept rate (log; FAR 0 at the left edge)",
            "true accept rate",
        ),
        f.polyline(xs, ys, "#1f78b4"),
    ]
    for fp in result.at_far:
        body.append(
            f.vline(math.log10(fp.target), CURRENT, f"FAR {fp.target:g}: TAR {fp.point.tar:.4f}", "2 4")
        )
    best, chosen = result.best, result.chosen.point
    for p, color, name, shape in (
        (best, BEST, "best accuracy", "circle"),
        (chosen, CHOSEN, "chosen", "rect"),
    ):
        cx, cy = f.px(math.log10(max(p.far, far_floor))), f.py(max(p.tar, y_lo))
        where = (
            f'cx="{cx:.1f}" cy="{cy:.1f}" r="6"'
            if shape == "circle"
            else (f'x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8"')
        )
        body.append(
            f'<{shape} {where} fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{name}: threshold {p.threshold:.4f}, TAR {p.tar:.4f}, FAR {p.far:.2e}</title></{shape}>"
        )
    body.append(
        f'<text x="{LEFT + 10}" y="{TOP + 16}"><tspan fill="{BEST}">○ best accuracy</tspan> '
        f'<tspan fill="{CHOSEN}">□ chosen</tspan> <tspan fill="{CURRENT}">┆ FAR targets</tspan></text>'
    )
    return _svg("".join(body), "ROC curve")


def histogram_svg(result: CalibrationResult, current: float | None = None, bins: int = 60) -> str:
    """Genuine and impostor score histograms, each as the fraction of its own pairs per bin."""
    g, imp = result.scores.genuine, result.scores.impostor
    lo, hi = float(min(g.min(), imp.min())), float(max(g.max(), imp.max()))
    if hi <= lo:
        hi = lo + 1e-3
    edges = np.linspace(lo, hi, bins + 1)
    gh = np.histogram(g, edges)[0] / g.size
    ih = np.histogram(imp, edges)[0] / imp.size
    top = float(max(gh.max(), ih.max())) * 1.05
    f = _Frame((lo, hi), (0.0, top))
    body = [
        f.axes(
            [(t, f"{t:g}") for t in _ticks(lo, hi)],
            [(t, f"{t:g}") for t in _ticks(0.0, top)],
            "cosine similarity",
            "fraction of pairs",
        )
    ]
    for hist, color in ((ih, IMPOSTOR), (gh, GENUINE)):
        # A step outline: each bin's height held across its width.
        xs = np.repeat(edges, 2)[1:-1]
        ys = np.repeat(hist, 2)
        body.append(f.polyline([lo, *xs, hi], [0.0, *ys, 0.0], color, 1.5))
    lines = [
        (result.best.threshold, BEST, "best-accuracy threshold"),
        (result.chosen.point.threshold, CHOSEN, "chosen"),
    ]
    if current is not None and lo <= current <= hi:
        lines.append((current, CURRENT, "configured now"))
    for x, color, name in lines:
        if lo <= x <= hi:
            body.append(f.vline(x, color, f"{name}: {x:.4f}"))
    return _svg("".join(body), "score histograms")


def _row(*cells: object) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def render_report(result: CalibrationResult, current_threshold: float | None = None) -> str:
    """The whole report as one HTML string."""
    d = result.as_dict()
    best, chosen = result.best, result.chosen.point
    far_rows = "".join(
        _row(
            f"{fp.target:g}",
            f"{fp.point.tar:.4f}",
            f"{fp.point.threshold:.6f}",
            f"{fp.point.far:.2e}",
            "yes" if fp.resolved else f"no (< {1 / fp.target:.0f} impostor pairs)",
        )
        for fp in result.at_far
    )
    err_rows = "".join(
        _row("genuine rejected" if e.genuine else "impostor accepted", f"{e.score:.4f}", e.a, e.b)
        for e in result.errors[:MAX_ERRORS_SHOWN]
    )
    missing = "".join(_row("undetected", p) for p in d["undetected"]) + "".join(
        _row("unreadable", p) for p in d["unreadable"]
    )
    legend = (
        f'<span style="color:{GENUINE}">■ genuine</span> <span style="color:{IMPOSTOR}">■ impostor</span> '
        f'<span style="color:{BEST}">┆ best accuracy</span> <span style="color:{CHOSEN}">┆ chosen</span>'
        + (f' <span style="color:{CURRENT}">┆ configured now</span>' if current_threshold is not None else "")
    )
    summary = "".join(
        [
            _row("folder", d["root"]),
            _row("embedder", d["embedder"]),
            _row("people / photos with a face", f"{d['people']} / {d['photos']}"),
            _row("pairs", f"{d['pairs']['genuine']} genuine, {d['pairs']['impostor']} impostor"),
            _row(
                "best accuracy",
                f"{best.accuracy:.4%} at {best.threshold:.6f} "
                f"(TAR {best.tar:.4f}, FAR {best.far:.2e}, balanced {best.balanced_accuracy:.4%})",
            ),
            _row(
                "best balanced accuracy",
                f"{result.best_balanced.balanced_accuracy:.4%} at {result.best_balanced.threshold:.6f} "
                "(what LFW's balanced pair protocol reports)",
            ),
            _row(
                "chosen threshold",
                f"{chosen.threshold:.4f} [{result.chosen.rule}: {result.chosen.reason}] "
                f"accuracy {chosen.accuracy:.4%}, TAR {chosen.tar:.4f}, FAR {chosen.far:.2e}",
            ),
            _row("configured now", "—" if current_threshold is None else f"{current_threshold:.4f}"),
            _row("ROC AUC", f"{result.roc.auc:.6f}"),
        ]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Consentry calibration</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td{{padding:2px 8px;vertical-align:top}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>Face matching calibration</h1>
<p>Accept when cosine similarity &ge; threshold. TAR: genuine pairs accepted; FAR: impostor pairs
accepted; accuracy: all pairs classified correctly (impostor pairs dominate; balanced accuracy
weighs both classes equally, as LFW's protocol does).</p>
<table>{summary}</table>
<h2>ROC</h2>{roc_svg(result)}
<h2>Score distributions</h2><p>{legend}</p>{histogram_svg(result, current_threshold)}
<h2>TAR at fixed FAR</h2><p>Threshold: the smallest whose measured FAR is at most the target.</p>
<table><tr><th>FAR target</th><th>TAR</th><th>threshold</th><th>measured FAR</th><th>resolved</th></tr>
{far_rows}</table>
<h2>Errors at the chosen threshold ({len(result.errors)})</h2>
<table><tr><th>kind</th><th>score</th><th>photo</th><th>photo</th></tr>{err_rows}</table>
<h2>Photos not used ({len(d["undetected"]) + len(d["unreadable"])})</h2><table>{missing}</table>
</body></html>
"""


def write_report(result: CalibrationResult, path: Path, current_threshold: float | None = None) -> Path:
    text = render_report(result, current_threshold)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConsentryError(f"cannot write {path}: {exc.strerror}", code=codes.REPORT_WRITE_FAILED) from exc
    return path


def summary_text(result: CalibrationResult, current_threshold: float | None = None) -> str:
    """The few lines the CLI prints without ``--json``."""
    d, best, chosen = result.as_dict(), result.best, result.chosen.point
    lines = [
        f"{d['embedder']}: {d['photos']} photos of {d['people']} people with a face; "
        f"{len(d['undetected'])} undetected, {len(d['unreadable'])} unreadable",
        f"pairs: {d['pairs']['genuine']} genuine, {d['pairs']['impostor']} impostor",
        f"best accuracy {best.accuracy:.2%} at {best.threshold:.4f} (TAR {best.tar:.2%}, FAR {best.far:.2e})",
        f"best balanced accuracy {result.best_balanced.balanced_accuracy:.2%} "
        f"at {result.best_balanced.threshold:.4f} (LFW's balanced-pair measure)",
    ]
    for fp in result.at_far:
        note = "" if fp.resolved else " (too few impostor pairs to resolve)"
        lines.append(
            f"TAR at FAR {fp.target:g}: {fp.point.tar:.2%} (threshold {fp.point.threshold:.4f}){note}"
        )
    now = "" if current_threshold is None else f"; configured now {current_threshold:.4f}"
    lines.append(f"chosen threshold {chosen.threshold:.4f}: {result.chosen.reason}{now}")
    return "\n".join(lines)
