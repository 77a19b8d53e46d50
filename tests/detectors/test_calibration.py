"""Verification metrics on synthetic scores whose answers are known or brute-forced."""

from __future__ import annotations

import numpy as np
import pytest

from consentry.detectors.calibration import (
    best_accuracy,
    choose_threshold,
    operating_point,
    pair_scores,
    roc_curve,
    round_up,
    tar_at_fars,
    threshold_at_far,
)


def _brute_best(g: np.ndarray, imp: np.ndarray, balanced: bool) -> float:
    """Best accuracy by trying every score (and +inf) as the threshold, accept when >=."""
    best = 0.0
    for t in [*np.concatenate([g, imp]), np.inf]:
        tar, far = np.mean(g >= t), np.mean(imp >= t)
        acc = (tar + 1 - far) / 2 if balanced else (np.sum(g >= t) + np.sum(imp < t)) / (g.size + imp.size)
        best = max(best, float(acc))
    return best


def test_pair_scores_splits_same_and_different_people() -> None:
    e = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    s = pair_scores(e, ["a", "a", "b", "b"])
    assert s.genuine_pairs.tolist() == [[0, 1], [2, 3]]
    assert s.genuine == pytest.approx([0.6, 0.0])
    assert s.impostor_pairs.tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    assert s.impostor == pytest.approx([0.0, -1.0, 0.8, -0.6])


def test_operating_point_accepts_scores_equal_to_the_threshold() -> None:
    p = operating_point(np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.75, 0.5, 0.4]), 0.75)
    assert (p.tar, p.far) == (pytest.approx(2 / 3), 0.25)
    assert p.accuracy == pytest.approx(5 / 7)
    assert p.balanced_accuracy == pytest.approx((2 / 3 + 0.75) / 2)


def test_best_accuracy_separable_scores_sit_mid_gap() -> None:
    p = best_accuracy(np.array([0.9, 0.8]), np.array([0.3, 0.5]))
    assert p.accuracy == 1.0 and p.threshold == pytest.approx(0.65)


def test_best_accuracy_ties_go_to_the_strictest_threshold() -> None:
    # Accepting >= 0.8 and accepting >= 0.6 both classify 3 of 4 pairs right.
    p = best_accuracy(np.array([0.8, 0.6]), np.array([0.7, 0.5]))
    assert p.accuracy == 0.75 and p.threshold == pytest.approx(0.75)


def test_balanced_accuracy_weighs_the_classes_equally() -> None:
    g, imp = np.array([0.9, 0.6]), np.array([0.7] + [0.1] * 8)
    plain, balanced = best_accuracy(g, imp), best_accuracy(g, imp, balanced=True)
    assert plain.threshold == pytest.approx(0.8) and plain.accuracy == pytest.approx(10 / 11)
    assert balanced.threshold == pytest.approx(0.35)
    assert balanced.balanced_accuracy == pytest.approx((1 + 8 / 9) / 2)


@pytest.mark.parametrize("balanced", [False, True])
def test_best_accuracy_matches_brute_force_on_overlapping_scores(balanced: bool) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        g = np.round(rng.normal(0.9, 0.05, 40), 2)  # rounding makes ties
        imp = np.round(rng.normal(0.8, 0.05, 300), 2)
        p = best_accuracy(g, imp, balanced=balanced)
        got = p.balanced_accuracy if balanced else p.accuracy
        assert got == pytest.approx(_brute_best(g, imp, balanced))


def test_threshold_at_far_is_the_smallest_that_meets_the_target() -> None:
    imp = np.arange(1000) / 1000  # 0.000 .. 0.999, all distinct
    g = np.array([0.995, 0.99, 0.98])
    fp = threshold_at_far(g, imp, 1e-2)
    assert fp.resolved and fp.point.far == 0.01 and fp.point.tar == pytest.approx(2 / 3)
    assert fp.point.threshold > 0.989
    assert operating_point(g, imp, 0.989).far > 0.01  # one step lower breaks the target


def test_threshold_at_far_counts_exactly_in_decimal() -> None:
    # 0.29 * 100 is 28.999999999999996 in binary floating point; 29 impostors may pass.
    fp = threshold_at_far(np.array([1.0]), np.arange(100) / 100, 0.29)
    assert fp.point.far == pytest.approx(0.29)


def test_threshold_at_far_ties_only_lower_the_far() -> None:
    fp = threshold_at_far(np.array([0.9, 0.4]), np.array([0.5] * 3 + [0.1] * 97), 0.02)
    assert fp.point.far == 0.0 and fp.point.tar == 0.5 and fp.resolved


def test_too_few_impostors_are_flagged_unresolved() -> None:
    imp = np.arange(1000) / 1000
    fars = tar_at_fars(np.array([0.9995, 0.5]), imp)
    assert [f.resolved for f in fars] == [True, True, False]
    unresolved = fars[2].point
    assert unresolved.far == 0.0 and unresolved.threshold > 0.999 and unresolved.tar == 0.5


def test_threshold_at_far_rejects_targets_outside_0_1() -> None:
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            threshold_at_far(np.array([1.0]), np.array([0.0]), bad)


def test_empty_or_nan_scores_are_refused() -> None:
    with pytest.raises(ValueError):
        best_accuracy(np.array([]), np.array([0.1]))
    with pytest.raises(ValueError):
        roc_curve(np.array([0.9]), np.array([np.nan]))


def test_roc_runs_from_0_0_to_1_1_and_its_auc_is_the_rank_statistic() -> None:
    rng = np.random.default_rng(3)
    g, imp = np.round(rng.normal(0.9, 0.05, 50), 2), np.round(rng.normal(0.8, 0.05, 200), 2)
    roc = roc_curve(g, imp)
    assert (roc.tar[0], roc.far[0], roc.tar[-1], roc.far[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.tar) >= 0) and np.all(np.diff(roc.far) >= 0)
    assert np.all(np.diff(roc.thresholds) < 0)
    wins = (g[:, None] > imp[None, :]).mean() + 0.5 * (g[:, None] == imp[None, :]).mean()
    assert roc.auc == pytest.approx(wins)


def test_round_up_never_loosens() -> None:
    assert round_up(0.91234, 4) == 0.9124
    assert round_up(0.9123, 4) == 0.9123
    assert round_up(0.91230000001, 4) == 0.9124


def _scores(
    n_g: int, n_i: int, g_hi: float, g_lo: list[float], imp_top: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    g = np.array([g_hi] * (n_g - len(g_lo)) + g_lo)
    imp = np.array(imp_top + [0.5] * (n_i - len(imp_top)))
    return g, imp


def test_choose_prefers_the_far_threshold_when_it_is_cheap() -> None:
    # 2000 impostors: FAR 1e-3 allows 2 of the 3 high ones. Best accuracy accepts all 3 to win
    # the 8 low genuine pairs (2197/2200 right); just above 0.805 loses 2 of them (2196/2200).
    low = [0.800, 0.801, 0.806, 0.807, 0.816, 0.817, 0.826, 0.827]
    g, imp = _scores(200, 2000, 0.95, low, [0.805, 0.815, 0.825])
    c = choose_threshold(g, imp, target_far=1e-3)
    assert c.best.threshold < 0.8 and c.best.accuracy == pytest.approx(2197 / 2200)
    assert c.rule == "far"
    assert c.point.far <= 1e-3 and c.point.threshold >= c.at_far.point.threshold
    assert c.point.threshold == round(c.point.threshold, 4)


def test_choose_keeps_best_accuracy_when_the_far_target_costs_too_much() -> None:
    g, imp = _scores(200, 2000, 0.95, [0.8002 + i / 1000 for i in range(40)], [0.805, 0.815, 0.825])
    c = choose_threshold(g, imp, target_far=1e-3, max_accuracy_cost=0.001)
    assert c.rule == "best-accuracy" and "cost" in c.reason
    assert c.point.threshold == round_up(c.best.threshold, 4)


def test_choose_keeps_best_accuracy_when_far_is_unresolved() -> None:
    g, imp = _scores(20, 200, 0.95, [0.80, 0.801, 0.81], [0.805])
    c = choose_threshold(g, imp, target_far=1e-3)
    assert not c.at_far.resolved
    assert c.rule == "best-accuracy" and "too few" in c.reason


def test_choose_best_accuracy_already_within_the_target() -> None:
    g, imp = _scores(200, 2000, 0.95, [], [0.6])
    c = choose_threshold(g, imp, target_far=1e-3)
    assert c.rule == "best-accuracy" and c.point.accuracy == 1.0 and c.point.far == 0.0
