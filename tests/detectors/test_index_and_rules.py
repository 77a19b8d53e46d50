"""Identity index (exact cosine search) and the face rules of the gate, on synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest

from consentry.detectors.index import IdentityIndex, normalise
from consentry.detectors.verification import judge_outputs, judge_references

RNG = np.random.default_rng(7)


def test_index_matches_numpy_brute_force() -> None:
    templates = normalise(RNG.normal(size=(500, 128)))
    owners = [f"idn_{i % 37}" for i in range(500)]
    queries = normalise(RNG.normal(size=(20, 128)))
    got = IdentityIndex(owners, templates).scores(queries)
    sims = queries @ templates.T
    for col, identity in enumerate(got.identities):
        mask = np.array([o == identity for o in owners])
        np.testing.assert_allclose(got.scores[:, col], sims[:, mask].max(axis=1), rtol=1e-5, atol=1e-6)


def test_empty_index_scores_minus_one() -> None:
    index = IdentityIndex([], np.zeros((0, 128), np.float32))
    assert index.scores(normalise(RNG.normal(size=(2, 128)))).scores.shape == (2, 0)


@pytest.fixture
def world() -> tuple[IdentityIndex, dict[str, np.ndarray]]:
    people = {name: normalise(RNG.normal(size=(1, 128)))[0] for name in ("a", "b")}
    templates = np.stack([people["a"], people["a"], people["b"]])
    return IdentityIndex(["a", "a", "b"], templates), people


def _noisy(v: np.ndarray, eps: float = 0.05) -> np.ndarray:
    return normalise((v + eps * RNG.normal(size=v.shape))[None])


def test_reference_rules(world) -> None:
    index, people = world
    stranger = normalise(RNG.normal(size=(1, 128)))
    no_face = np.zeros((0, 128), np.float32)

    def ref(*faces: np.ndarray, allow_unknown: bool = False) -> str:
        scores = [index.scores(f) for f in faces]
        return judge_references(scores, subject="a", threshold=0.8, allow_unknown=allow_unknown).code

    assert ref(_noisy(people["a"])) == "ok"
    assert ref(_noisy(people["a"]), _noisy(people["b"])) == "face.protected_identity"
    assert ref(stranger) == "face.unknown"
    assert ref(stranger, allow_unknown=True) == "ok"
    assert ref(no_face) == "face.none"
    assert ref(np.concatenate([_noisy(people["a"]), stranger])) == "face.unknown"


def test_output_rules(world) -> None:
    index, people = world

    def out(face: np.ndarray, require_face: bool = False) -> str:
        return judge_outputs([index.scores(face)], subject="a", threshold=0.8, require_face=require_face).code

    assert out(_noisy(people["a"])) == "ok"
    assert out(_noisy(people["b"])) == "output.protected_identity"
    assert out(normalise(RNG.normal(size=(1, 128)))) == "output.identity_mismatch"
    assert out(np.zeros((0, 128), np.float32)) == "ok"
    assert out(np.zeros((0, 128), np.float32), require_face=True) == "output.identity_mismatch"
