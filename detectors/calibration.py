"""Verification metrics over genuine and impostor similarity scores: pure numpy, no models.

A *genuine* score compares two photos of the same person, an *impostor* score two different
people. The gate accepts a pair as the same person when ``score >= threshold`` (the same rule as
``detectors.verification``), so every definition here uses that inclusive comparison:

- ``TAR(t)``: genuine scores ``>= t`` / genuine count (true accept rate).
- ``FAR(t)``: impostor scores ``>= t`` / impostor count (false accept rate).
- ``accuracy(t)``: (genuine accepted + impostor rejected) / all pairs. Over *all* pairs of a
  folder, impostor pairs outnumber genuine ones (10 people x 10 photos: 4500 vs 450), so this
  weights false accepts more; ``balanced_accuracy`` = (TAR + 1 - FAR) / 2 is what LFW's
  balanced 3000 + 3000 pair protocol measures.

Thresholds are reported exactly (no rounding) except by ``choose_threshold``, which rounds
*up* to a few decimals so that a configured value never accepts more than what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import numpy as np

STANDARD_FARS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True, slots=True)
class PairScores:
    """All same-person pairs and all different-person pairs of a labelled sample set.

    ``*_pairs`` are ``(n, 2)`` indices into the samples (``i < j``), row-aligned with scores.
    """

    genuine: np.ndarray  # float64 (n_genuine,)
    impostor: np.ndarray  # float64 (n_impostor,)
    genuine_pairs: np.ndarray  # int64 (n_genuine, 2)
    impostor_pairs: np.ndarray  # int64 (n_impostor, 2)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """What the gate would do on these pairs at ``threshold`` (accept when score >= it)."""

    threshold: float
    tar: float
    far: float
    accuracy: float

    @property
    def balanced_accuracy(self) -> float:
        return (self.tar + 1.0 - self.far) / 2.0


@dataclass(frozen=True, slots=True)
class FarPoint:
    """The smallest threshold whose measured FAR is at most ``target``, and its TAR.

    ``resolved`` is False when there are fewer than ``1/target`` impostor pairs: the data then
    cannot tell ``target`` apart from "no false accept at all", the threshold is just above the
    highest impostor score, and the TAR is optimistic (a truly FAR-``target`` threshold could be
    stricter than anything these pairs can show).
    """

    target: float
    point: OperatingPoint
    resolved: bool


@dataclass(frozen=True, slots=True)
class Roc:
    """ROC curve from strictest to loosest threshold; ``thresholds[0]`` is +inf (0, 0)."""

    thresholds: np.ndarray
    tar: np.ndarray
    far: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve: P(genuine score > impostor score), ties counting half."""
        return float(np.trapezoid(self.tar, self.far))


@dataclass(frozen=True, slots=True)
class ChosenThreshold:
    """The threshold ``choose_threshold`` recommends, why, and what it was chosen between."""

    point: OperatingPoint
    rule: str  # "far" (the FAR-target threshold) or "best-accuracy"
    reason: str
    best: OperatingPoint
    at_far: FarPoint


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"no {name} scores")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} scores must be finite")
    return arr


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> PairScores:
    """Cosine similarity of every unordered pair of L2-normalised ``embeddings`` rows."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError("embeddings must be (n, dim) with one label per row")
    # float32 products, as the identity index computes them, then widened for the statistics.
    sims = (emb @ emb.T).astype(np.float64)
    i, j = np.triu_indices(len(emb), k=1)
    lab = np.asarray(labels, dtype=object)
    same = lab[i] == lab[j]
    pairs = np.stack([i, j], axis=1).astype(np.int64)
    return PairScores(sims[i, j][same], sims[i, j][~same], pairs[same], pairs[~same])


def operating_point(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> OperatingPoint:
    g, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    accepted_g = int(np.count_nonzero(g >= threshold))
    accepted_i = int(np.count_nonzero(imp >= threshold))
    correct = accepted_g + (imp.size - accepted_i)
    return OperatingPoint(
        threshold=float(threshold),
        tar=accepted_g / g.size,
        far=accepted_i / imp.size,
        accuracy=correct / (g.size + imp.size),
    )


def _between(lo: float, hi: float) -> float:
    """A threshold strictly above ``lo`` and at most ``hi``: the midpoint when it exists."""
    mid = lo + (hi - lo) / 2.0
    return mid if lo < mid <= hi else hi


def best_accuracy(genuine: np.ndarray, impostor: np.ndarray, *, balanced: bool = False) -> OperatingPoint:
    """The threshold with the highest ``accuracy`` (``balanced_accuracy`` when ``balanced``).

    Only the gaps between distinct scores matter: every threshold in one gap makes the same
    decisions, so the midpoint of the winning gap is reported (the value farthest from both
    neighbouring scores). Rejecting everything is a candidate too (threshold just above the
    highest score). Ties go to the strictest threshold: for a consent gate a false accept is the
    worse error.
    """
    g, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    values, inverse = np.unique(np.concatenate([g, imp]), return_inverse=True)
    g_counts = np.bincount(inverse[: g.size], minlength=values.size)
    i_counts = np.bincount(inverse[g.size :], minlength=values.size)
    # Candidate j accepts exactly the scores >= values[j]; j = len(values) rejects everything.
    g_accepted = np.concatenate([np.cumsum(g_counts[::-1])[::-1], [0]])
    i_rejected = np.concatenate([[0], np.cumsum(i_counts)])
    # Integer scores keep ties exact: balanced weighs each class by the other's size.
    correct = g_accepted * imp.size + i_rejected * g.size if balanced else g_accepted + i_rejected
    j = int(np.flatnonzero(correct == correct.max())[-1])
    if j == 0:
        threshold = float(values[0])
    elif j == values.size:
        threshold = float(np.nextafter(values[-1], np.inf))
    else:
        threshold = _between(float(values[j - 1]), float(values[j]))
    return operating_point(g, imp, threshold)


def threshold_at_far(genuine: np.ndarray, impostor: np.ndarray, target: float) -> FarPoint:
    """The smallest threshold whose measured FAR is ``<= target`` (0 < target < 1).

    With ``n`` impostor pairs at most ``k = floor(target * n)`` may be accepted, so the
    threshold must lie above the (k+1)-th highest impostor score; the smallest such value is
    the next float64 above it. Ties only lower the FAR further.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target FAR must be in (0, 1), got {target}")
    g, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    # Decimal keeps e.g. 1e-3 * 3000 at exactly 3 (binary floats could floor it to 2).
    k = math.floor(Decimal(repr(target)) * imp.size)
    kth = float(np.sort(imp)[::-1][k])
    point = operating_point(g, imp, float(np.nextafter(kth, np.inf)))
    return FarPoint(target=target, point=point, resolved=k >= 1)


def tar_at_fars(
    genuine: np.ndarray, impostor: np.ndarray, targets: Sequence[float] = STANDARD_FARS
) -> tuple[FarPoint, ...]:
    return tuple(threshold_at_far(genuine, impostor, t) for t in targets)


def roc_curve(genuine: np.ndarray, impostor: np.ndarray) -> Roc:
    """TAR and FAR at every distinct score used as the threshold, strictest first."""
    g, imp = _scores(genuine, "genuine"), _scores(impostor, "impostor")
    values, inverse = np.unique(np.concatenate([g, imp]), return_inverse=True)
    g_counts = np.bincount(inverse[: g.size], minlength=values.size)[::-1]
    i_counts = np.bincount(inverse[g.size :], minlength=values.size)[::-1]
    return Roc(
        thresholds=np.concatenate([[np.inf], values[::-1]]),
        tar=np.concatenate([[0.0], np.cumsum(g_counts) / g.size]),
        far=np.concatenate([[0.0], np.cumsum(i_counts) / imp.size]),
    )


def round_up(threshold: float, decimals: int) -> float:
    """``threshold`` rounded towards +inf: a stricter (or equal) readable value."""
    quantum = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(threshold)).quantize(quantum, rounding=ROUND_CEILING))


def choose_threshold(
    genuine: np.ndarray,
    impostor: np.ndarray,
    *,
    target_far: float = 1e-3,
    max_accuracy_cost: float = 0.005,
    decimals: int = 4,
) -> ChosenThreshold:
    """The threshold to configure for a consent gate.

    A false accept (someone else's face passing as the consenting subject) is worse than a
    false reject (the subject retries with another photo), so the FAR-``target_far`` threshold
    is preferred whenever it is stricter than the best-accuracy one, the data resolve that FAR
    (at least ``1/target_far`` impostor pairs) and it costs at most ``max_accuracy_cost`` of
    accuracy. Otherwise the best-accuracy threshold is chosen, which is then either already
    within the FAR target or the only defensible choice these data support. The result is
    rounded up to ``decimals`` places (never looser than measured) and re-evaluated there.
    """
    best = best_accuracy(genuine, impostor)
    at_far = threshold_at_far(genuine, impostor, target_far)
    cost = best.accuracy - at_far.point.accuracy
    if at_far.point.threshold <= best.threshold:
        rule, reason = "best-accuracy", f"the best-accuracy threshold already keeps FAR <= {target_far:g}"
    elif not at_far.resolved:
        rule, reason = "best-accuracy", f"too few impostor pairs to resolve FAR {target_far:g}"
    elif cost > max_accuracy_cost:
        rule, reason = "best-accuracy", f"FAR {target_far:g} would cost {cost:.2%} accuracy"
    else:
        rule, reason = "far", f"keeps FAR <= {target_far:g} at a cost of {cost:.2%} accuracy"
    raw = at_far.point.threshold if rule == "far" else best.threshold
    point = operating_point(genuine, impostor, round_up(raw, decimals))
    return ChosenThreshold(point=point, rule=rule, reason=reason, best=best, at_far=at_far)
