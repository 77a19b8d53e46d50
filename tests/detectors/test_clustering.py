"""Average-linkage grouping and the purity/completeness metrics, on synthetic embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consentry.detectors.clustering import Clustering, cluster_embeddings, completeness, purity


def people(rng: np.random.Generator, sizes: list[int], dim: int = 128, noise: float = 0.04) -> tuple:
    """Unit vectors around one random centre per person; returns (embeddings, person per row)."""
    centres = rng.normal(size=(len(sizes), dim))
    rows, truth = [], []
    for person, n in enumerate(sizes):
        rows.append(
            centres[person] / np.linalg.norm(centres[person]) + rng.normal(scale=noise, size=(n, dim))
        )
        truth += [person] * n
    x = np.concatenate(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True), truth


def partition(c: Clustering) -> set[frozenset[int]]:
    return {frozenset(c.members(g).tolist()) for g in range(c.n_groups)}


def greedy_average_linkage(x: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """The textbook algorithm, slowly: merge the pair of groups with the highest mean similarity."""
    sim = x @ x.T
    groups = [[i] for i in range(len(x))]
    while len(groups) > 1:
        best, pair = -math.inf, (0, 0)
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                mean = float(sim[np.ix_(groups[i], groups[j])].mean())
                if mean > best:
                    best, pair = mean, (i, j)
        if best < threshold:
            break
        i, j = pair
        groups[i] += groups.pop(j)
    return {frozenset(g) for g in groups}


def test_separated_people_are_recovered_exactly_and_numbered_by_size() -> None:
    rng = np.random.default_rng(7)
    x, truth = people(rng, [3, 9, 5, 1, 7])
    c = cluster_embeddings(x, threshold=0.8)
    assert c.sizes == (9, 7, 5, 3, 1)
    assert purity(c.labels, truth) == 1.0 and completeness(c.labels, truth) == 1.0
    assert [truth[c.members(g)[0]] for g in range(c.n_groups)] == [1, 4, 2, 0, 3]


@pytest.mark.parametrize("seed", range(6))
def test_same_groups_as_the_textbook_algorithm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, _ = people(rng, list(rng.integers(1, 6, size=5)), dim=8, noise=0.35)
    for threshold in (0.2, 0.5, 0.8):
        assert partition(cluster_embeddings(x, threshold)) == greedy_average_linkage(x, threshold)


def test_one_close_pair_does_not_chain_two_people() -> None:
    # Two arcs of five points on a circle; the nearest ends are 8 degrees apart (above the
    # threshold of 10 degrees), the arcs' mean separation is 12 degrees (below it).
    angles = np.radians([0, 1, 2, 3, 4, 12, 13, 14, 15, 16])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    threshold = math.cos(math.radians(10))
    assert float(x[4] @ x[5]) >= threshold  # single linkage would merge the arcs
    c = cluster_embeddings(x, threshold)
    assert partition(c) == {frozenset(range(5)), frozenset(range(5, 10))}


def test_deterministic_and_independent_of_input_order() -> None:
    rng = np.random.default_rng(3)
    x, _ = people(rng, [4, 4, 6, 2], noise=0.08)
    first = cluster_embeddings(x, 0.7)
    assert np.array_equal(first.labels, cluster_embeddings(x, 0.7).labels)
    perm = rng.permutation(len(x))
    shuffled = cluster_embeddings(x[perm], 0.7)
    assert {frozenset(perm[list(m)].tolist()) for m in partition(shuffled)} == partition(first)
    # Equal sizes (the two groups of 4) are ordered by their first row.
    firsts = [int(first.members(g)[0]) for g in range(first.n_groups) if first.sizes[g] == 4]
    assert firsts == sorted(firsts)


def test_a_higher_threshold_only_splits_groups() -> None:
    rng = np.random.default_rng(11)
    x, _ = people(rng, [6, 5, 4, 3], dim=16, noise=0.2)
    loose, strict = partition(cluster_embeddings(x, 0.3)), partition(cluster_embeddings(x, 0.9))
    assert len(strict) > len(loose)
    assert all(any(s <= big for big in loose) for s in strict)


def test_unnormalised_input_is_normalised() -> None:
    rng = np.random.default_rng(5)
    x, _ = people(rng, [4, 4])
    scaled = x * rng.uniform(0.1, 10, size=(len(x), 1))
    assert np.array_equal(cluster_embeddings(scaled, 0.8).labels, cluster_embeddings(x, 0.8).labels)


def test_edge_cases_and_bad_input() -> None:
    assert cluster_embeddings(np.zeros((0, 4)), 0.9).n_groups == 0
    one = cluster_embeddings(np.ones((1, 4)), 0.9)
    assert one.sizes == (1,) and one.labels.tolist() == [0]
    for bad in (np.ones(4), np.array([[1.0, np.nan]])):
        with pytest.raises(ValueError):
            cluster_embeddings(bad, 0.9)
    with pytest.raises(ValueError):
        cluster_embeddings(np.ones((2, 2)), 1.5)


def test_metrics_by_hand() -> None:
    predicted = [0, 0, 0, 0, 1, 2]
    truth = ["a", "a", "b", "b", "b", None]  # the last face belongs to nobody known: ignored
    # groups: {a,a,b,b} -> 2, {b} -> 1: purity 3/5; people: a -> 2, b -> max(2, 1) = 2: 4/5.
    assert purity(predicted, truth) == pytest.approx(3 / 5)
    assert completeness(predicted, truth) == pytest.approx(4 / 5)
    assert purity([0, 1, 2], ["a", "a", "a"]) == 1.0
    assert completeness([0, 1, 2], ["a", "a", "a"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        purity([0, 1], ["a"])
    with pytest.raises(ValueError):
        completeness([0], [None])
