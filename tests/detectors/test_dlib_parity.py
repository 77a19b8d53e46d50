"""Our PyTorch dlib ResNet against dlib itself, on real LFW faces, plus the .dat parser's errors.

dlib (the ``dlib-bin`` test dependency) is the reference: it detects, aligns and describes the
faces; our embedder describes the very same chips. Skipped only when dlib cannot be imported.
"""

from __future__ import annotations

import csv
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentry.detectors.dlib_resnet import (
    default_dlib_weights,
    face_recognition_models_file,
    load_dlib_resnet,
)
from consentry.detectors.embedders import DlibResNetEmbedder, Embedder
from consentry.policies.errors import BadInputError, ConfigurationError

dlib = pytest.importorskip("dlib")

MAX_FACES = 60  # enough for the >= 50 acceptance line, few enough to keep the test quick


@pytest.fixture(scope="module")
def faces(faces_dir: Path) -> tuple[list[str], np.ndarray]:
    """(person, dlib chip) for the centred face of LFW photos, cut entirely by dlib."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        str(face_recognition_models_file("shape_predictor_5_face_landmarks.dat"))
    )
    with (faces_dir / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("lfw/")]
    rows.sort(key=lambda r: (r["path"].rsplit("_", 1)[1], r["person"]))  # interleave people
    people, chips = [], []
    for row in rows[: MAX_FACES + 15]:
        image = np.asarray(Image.open(faces_dir / row["path"]).convert("RGB"))
        found = detector(image, 0)  # LFW faces are large; no upsampling needed
        if not found:
            continue
        centre = np.array(image.shape[1::-1]) / 2
        box = min(found, key=lambda b: np.hypot(*(np.array([b.center().x, b.center().y]) - centre)))
        chip = dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25)
        people.append(row["person"])
        chips.append(chip)
        if len(chips) == MAX_FACES:
            break
    return people, np.stack(chips)


@pytest.fixture(scope="module")
def dlib_descriptors(faces: tuple[list[str], np.ndarray]) -> np.ndarray:
    model = dlib.face_recognition_model_v1(str(default_dlib_weights()))
    return np.array([np.array(d) for d in model.compute_face_descriptor(list(faces[1]))])


@pytest.fixture(scope="module")
def embedder() -> DlibResNetEmbedder:
    return DlibResNetEmbedder(device="auto")


@pytest.fixture(scope="module")
def ours_raw(faces: tuple[list[str], np.ndarray], embedder: DlibResNetEmbedder) -> np.ndarray:
    return embedder.embed_raw(faces[1])


def test_parity_with_dlib_on_every_face(ours_raw: np.ndarray, dlib_descriptors: np.ndarray) -> None:
    ours, ref = ours_raw, dlib_descriptors
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"\n{len(cosine)} faces: cosine min {cosine.min():.7f} mean {cosine.mean():.7f}")
    assert len(cosine) >= 50
    assert cosine.min() >= 0.999, np.argsort(cosine)[:5]
    # Raw descriptors, not only directions: dlib's 0.6 distance threshold depends on scale.
    ratio = np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert np.abs(ratio - 1).max() < 1e-3


def test_same_person_close_different_people_far(
    faces: tuple[list[str], np.ndarray], ours_raw: np.ndarray
) -> None:
    people, raw = faces[0], ours_raw
    vectors = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    same: list[tuple[float, float]] = []
    different: list[tuple[float, float]] = []
    for i, j in combinations(range(len(people)), 2):
        cosine, distance = float(vectors[i] @ vectors[j]), float(np.linalg.norm(raw[i] - raw[j]))
        (same if people[i] == people[j] else different).append((cosine, distance))
    assert len(set(people)) >= 5 and len(same) >= 50
    same_cos, same_dist = np.array(same).T
    diff_cos, diff_dist = np.array(different).T
    # dlib's documented rule: raw descriptors under 0.6 apart are the same person.
    assert np.mean(same_dist < 0.6) >= 0.95 and np.mean(diff_dist >= 0.6) >= 0.98
    # dlib vectors are not centred: impostors still score ~0.85 cosine, genuine pairs ~0.95.
    assert diff_cos.max() < np.median(same_cos)
    assert same_cos.mean() - diff_cos.mean() > 0.05


def test_embed_contract(
    faces: tuple[list[str], np.ndarray], ours_raw: np.ndarray, embedder: DlibResNetEmbedder
) -> None:
    chips, raw = faces[1][:4], ours_raw[:4]
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dim, embedder.chip_size) == ("dlib-resnet-v1", 128, 150)
    vectors = embedder.embed(chips)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    # Splitting into batches must not change any face's result.
    small = DlibResNetEmbedder(device="cpu", batch_size=3, model=load_dlib_resnet())
    np.testing.assert_allclose(small.embed(chips), vectors, atol=1e-4)
    assert embedder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


@pytest.mark.parametrize(
    "chips",
    [
        np.zeros((1, 150, 150, 3), np.float32),
        np.zeros((1, 112, 112, 3), np.uint8),
        np.zeros((150, 150, 3), np.uint8),
    ],
)
def test_bad_chips_are_rejected(chips: np.ndarray, embedder: DlibResNetEmbedder) -> None:
    with pytest.raises(BadInputError):
        embedder.embed(chips)


def test_weights_are_found_without_importing_face_recognition_models() -> None:
    assert default_dlib_weights().is_file()
    assert "face_recognition_models" not in sys.modules


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_weights_are_invalid(tmp_path: Path, cut: float) -> None:
    data = default_dlib_weights().read_bytes()
    broken = tmp_path / "truncated.dat"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ConfigurationError) as info:
        load_dlib_resnet(broken)
    assert info.value.code == "model.weights_invalid"


def test_altered_weights_are_invalid(tmp_path: Path) -> None:
    data = bytearray(default_dlib_weights().read_bytes())
    at = data.index(b"max_pool_2")
    data[at : at + 10] = b"avg_pool_2"  # a well-formed file of the wrong network
    broken = tmp_path / "altered.dat"
    broken.write_bytes(bytes(data))
    with pytest.raises(ConfigurationError) as info:
        load_dlib_resnet(broken)
    assert info.value.code == "model.weights_invalid"


def test_missing_weights_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_dlib_resnet(tmp_path / "absent.dat")
    assert info.value.code == "model.weights_missing"
