"""IdentityIndex at a realistic size against an independent numpy brute force.

50,000 unit templates for 10,000 identities with 1 to 9 templates each, rows shuffled so no
identity's templates are adjacent. The reference never sees the shuffle: it scores the
identity-grouped matrix and takes each identity's maximum with ``np.maximum.reduceat``. No
timing is asserted here; speed lives in bench/index_search.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consentry.detectors.index import IdentityIndex

IDENTITIES = 10_000
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    rng = np.random.default_rng(20240611)
    counts = rng.integers(1, 10, IDENTITIES)
    # Fix the total at exactly 50,000 rows: top up or trim the last identities, keeping 1..9 each.
    surplus = int(counts.sum()) - 50_000
    for i in range(IDENTITIES - 1, -1, -1):
        if surplus == 0:
            break
        step = min(surplus, counts[i] - 1) if surplus > 0 else max(surplus, counts[i] - 9)
        counts[i] -= step
        surplus -= step
    grouped = rng.standard_normal((int(counts.sum()), 128), dtype=np.float32)
    grouped /= np.linalg.norm(grouped, axis=1, keepdims=True)
    owner_of_row = np.repeat(np.arange(IDENTITIES), counts)
    perm = rng.permutation(len(grouped))
    # Probes: a noisy copy of some template (cosine ~0.8, like a real face); then strangers.
    near = grouped[rng.integers(0, len(grouped), 200)]
    near += 0.055 * rng.standard_normal(near.shape, dtype=np.float32)
    queries = np.concatenate([near, rng.standard_normal((50, 128), dtype=np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    reference = np.maximum.reduceat(queries @ grouped.T, starts, axis=1)  # (queries, identities)
    return {
        "counts": counts,
        "templates": grouped[perm],
        "owners": [f"idn_{owner_of_row[i]:05d}" for i in perm],
        "queries": queries,
        "reference": reference,
    }


def _devices() -> list[object]:
    gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, gpu])]


def test_world_is_what_it_claims(world: dict) -> None:
    counts = world["counts"]
    assert len(world["templates"]) == 50_000 and len(set(world["owners"])) == IDENTITIES
    assert counts.min() == 1 and counts.max() == 9


@pytest.mark.parametrize("device", _devices())
def test_scores_and_best_identity_match_brute_force(world: dict, device: str) -> None:
    index = IdentityIndex(world["owners"], world["templates"], device=device)
    assert len(index) == 50_000
    # Map the index's columns (first-appearance order) onto the reference's identity numbers.
    order = np.array([int(name[4:]) for name in index.identities])
    assert sorted(order.tolist()) == list(range(IDENTITIES))
    reference = world["reference"][:, order]

    got = index.scores(world["queries"])
    assert got.scores.shape == reference.shape
    assert np.abs(got.scores - reference).max() <= TOLERANCE

    ranked = np.sort(reference, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 2 * TOLERANCE  # rows with no near-tie for the best
    assert clear.sum() >= 0.95 * len(clear)  # the comparison below covers nearly every query
    np.testing.assert_array_equal(got.scores.argmax(1)[clear], reference.argmax(1)[clear])
    # Every probe finds the identity whose template it was made from, well above strangers.
    assert reference[:200].max(1).min() > 0.6 > reference[200:].max(1).max()


@pytest.mark.parametrize("device", _devices())
def test_public_lookups_agree_with_brute_force(world: dict, device: str) -> None:
    """``best`` and ``of`` (what the face rules call) return the reference's answers."""
    index = IdentityIndex(world["owners"], world["templates"], device=device)
    order = np.array([int(name[4:]) for name in index.identities])
    reference = world["reference"][:, order]
    got = index.scores(world["queries"][:12])  # best() is a Python loop: keep the rows few
    for row in range(12):
        ranked = np.argsort(reference[row])[::-1]
        first, second = index.identities[ranked[0]], index.identities[ranked[1]]
        name, score = got.best(row)
        assert name == first and abs(score - reference[row, ranked[0]]) <= TOLERANCE
        name, score = got.best(row, exclude=first)
        assert name == second and abs(score - reference[row, ranked[1]]) <= TOLERANCE
        assert abs(got.of(row, second) - reference[row, ranked[1]]) <= TOLERANCE
    assert got.of(0, "idn_not_enrolled") == -1.0
