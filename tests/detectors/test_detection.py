"""FaceDetector on the shared photos, and align_faces against dlib's own face chips.

Figures are printed (run with ``-s`` to see them) and asserted against the acceptance lines.
dlib (the ``dlib-bin`` test dependency) is the alignment reference.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from consentry.detectors.align import (
    LANDMARK_WEIGHTS,
    align_faces,
    estimate_similarity,
    face_template,
    warp_chip,
)
from consentry.detectors.detection import DetectedFace, FaceDetector
from consentry.policies.errors import BadInputError, ConfigurationError

if TYPE_CHECKING:
    from dlib import chip_details  # dlib ships no type information: this is Any to mypy

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def small_face_detector() -> FaceDetector:
    # The group photos hold faces down to ~23 px; the deployment default (40) skips those.
    return FaceDetector(device="cpu", min_face_px=20)


def load(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def centred(faces: list[DetectedFace], image: Image.Image) -> DetectedFace | None:
    cx, cy = image.width / 2, image.height / 2
    return min(faces, key=lambda f: np.hypot(f.center[0] - cx, f.center[1] - cy), default=None)


# -- detection --------------------------------------------------------------------------------


def test_group_photos_recall(faces_dir: Path, small_face_detector: FaceDetector) -> None:
    paths = sorted((faces_dir / "groups").glob("*.jpg"))
    expected = [int(p.stem.rsplit("_", 1)[1]) for p in paths]
    found = [len(f) for f in small_face_detector.detect([load(p) for p in paths])]
    recall = sum(min(f, k) for f, k in zip(found, expected, strict=True)) / sum(expected)
    report = {p.name: (f, k) for p, f, k in zip(paths, found, expected, strict=True)}
    print(f"\ngroups (found, expected): {report}; recall {recall:.3f}")
    assert recall >= 0.95, report
    assert report["017_0.jpg"][0] == 0, "the landscape has no face"
    assert all(f <= k + 1 for f, k in report.values()), report


def test_min_face_px_is_a_hard_limit(faces_dir: Path, detector: FaceDetector) -> None:
    faces = detector.detect([load(faces_dir / "groups" / "016_8.jpg")])[0]
    assert all(f.min_side >= 40 for f in faces)
    assert len(faces) < 8  # its eight faces are 23-32 px: most must be skipped at 40


def test_every_format_gives_one_face(faces_dir: Path, detector: FaceDetector) -> None:
    paths = sorted((faces_dir / "formats").iterdir())
    images = [load(p) for p in paths]  # all 256x256: one batch
    results = detector.detect(images)
    assert [len(r) for r in results] == [1] * len(paths), [p.name for p in paths]
    boxes = np.array([r[0].box for r in results])
    # The same face in every format (lossy JPEG/WebP/GIF move the box by a few pixels).
    assert np.abs(boxes - boxes.mean(axis=0)).max() < 6.0


def test_lfw_centred_face_is_found(faces_dir: Path, detector: FaceDetector) -> None:
    with open(faces_dir / "manifest.csv", newline="") as fh:
        noted = {r["path"]: r["faces"] for r in csv.DictReader(fh)}
    paths = sorted(faces_dir.glob("lfw/*/*.jpg"))
    images = [load(p) for p in paths]
    results = detector.detect(images)
    extra = {}
    for path, image, faces in zip(paths, images, results, strict=True):
        face = centred(faces, image)
        assert face is not None, path.name
        assert np.hypot(face.center[0] - 125, face.center[1] - 125) < 30, path.name
        lm = np.array(face.landmarks)
        # MTCNN's order, on an upright face: image-left eye, image-right eye, nose, mouth.
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], path.name
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1]), path.name
        if len(faces) > 1:
            extra[path.name] = (len(faces), noted[str(path.relative_to(faces_dir))])
    print(f"\nLFW: {len(paths)} photos; more than one face (found, manifest): {extra}")
    assert max(len(r) for r in results) <= 3  # no 250x250 frame holds more 40 px faces


def test_batched_equals_one_by_one(faces_dir: Path, detector: FaceDetector) -> None:
    images = [
        load(faces_dir / "lfw" / "Tony_Blair" / "Tony_Blair_0002.jpg"),
        load(faces_dir / "formats" / "einstein.png"),  # another size: its own batch
        load(faces_dir / "lfw" / "Colin_Powell" / "Colin_Powell_0010.jpg"),
    ]
    together = detector.detect(images)
    alone = [detector.detect([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert np.allclose(fa.box, fb.box, atol=0.5)
            assert np.allclose(fa.landmarks, fb.landmarks, atol=0.5)


def test_degenerate_inputs(detector: FaceDetector) -> None:
    assert detector.detect([]) == []
    tiny = Image.new("RGB", (10, 10))
    gray = Image.new("L", (64, 64), 128)  # converted, not refused; and no face in it
    assert detector.detect([tiny, gray]) == [[], []]


def test_detected_face_is_frozen(faces_dir: Path, detector: FaceDetector) -> None:
    face = detector.detect([load(faces_dir / "formats" / "einstein.jpeg")])[0][0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.probability = 0.0  # type: ignore[misc]  # assigning to a frozen field is the test
    assert 0.9 <= face.probability <= 1.0 and len(face.landmarks) == 5


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError):
        FaceDetector(device="cpu", min_face_px=5)
    with pytest.raises(ConfigurationError):
        FaceDetector(device="cpu", thresholds=(0.6, 0.7))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError):
            FaceDetector(device="cuda")
        assert FaceDetector(device="auto").device.type == "cpu"


# -- alignment against dlib -------------------------------------------------------------------


def dlib_chip_to_image(details: chip_details) -> np.ndarray:
    """dlib's chip -> image map: chip (0,0), (cols-1,0), (0,rows-1) sit on the rect's tl, tr,
    bl corners rotated by ``angle`` about its centre."""
    r, a = details.rect, details.angle
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    tl, tr, bl = (rot @ (np.array(p) - centre) + centre for p in
                  ((r.left(), r.top()), (r.right(), r.top()), (r.left(), r.bottom())))  # fmt: skip
    cols, rows = details.cols - 1, details.rows - 1
    return np.vstack([np.column_stack([(tr - tl) / cols, (bl - tl) / rows, tl]), [0, 0, 1]])


@pytest.fixture(scope="module")
def lfw_pairs(faces_dir: Path, detector: FaceDetector) -> list[tuple[np.ndarray, object, object]]:
    """(rgb, MTCNN face, dlib 5-point shape) for the centred face of 40 LFW photos."""
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    paths = [p for person in sorted((faces_dir / "lfw").iterdir()) for p in sorted(person.glob("*.jpg"))[:4]]
    images = [load(p) for p in paths]
    pairs: list[tuple[np.ndarray, object, object]] = []
    for image, faces in zip(images, detector.detect(images), strict=True):
        rgb = np.asarray(image)
        dets = list(hog(rgb, 1))
        face = centred(faces, image)
        if not dets or face is None:
            continue
        det = min(dets, key=lambda d: np.hypot(d.dcenter().x - 125, d.dcenter().y - 125))
        x1, y1, x2, y2 = face.box
        if x1 <= det.dcenter().x <= x2 and y1 <= det.dcenter().y <= y2:  # the same face
            pairs.append((rgb, face, predictor(rgb, det)))
    assert len(pairs) >= 30
    return pairs


@pytest.mark.parametrize(("size", "padding"), [(150, 0.25), (80, 0.25), (200, 0.4)])
def test_chips_match_dlib_chips(lfw_pairs: list, size: int, padding: float) -> None:
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]])
    corner_err, landmark_err, corr = [], [], []
    for rgb, face, shape in lfw_pairs:
        to_dlib = np.linalg.inv(dlib_chip_to_image(dlib.get_face_chip_details(shape, size, padding)))
        ours = np.vstack([estimate_similarity(np.array(face.landmarks), face_template(size, padding),
                                              LANDMARK_WEIGHTS), [0, 0, 1]])  # fmt: skip
        seen = (to_dlib @ np.linalg.inv(ours) @ corners.T).T[:, :2]
        corner_err.append(np.linalg.norm(seen - corners[:, :2], axis=1).mean())
        lm = np.hstack([np.array(face.landmarks), np.ones((5, 1))])
        landmark_err.append(np.linalg.norm(((ours - to_dlib) @ lm.T)[:2].T, axis=1).mean())
        chip = align_faces(rgb, [face], size=size, padding=padding)[0].astype(float)
        theirs = np.asarray(dlib.get_face_chip(rgb, shape, size, padding), dtype=float)
        corr.append(np.corrcoef(chip.ravel(), theirs.ravel())[0, 1])
    scale = size / 150  # displacements grow with the chip
    print(
        f"\n{len(lfw_pairs)} LFW faces, size {size} padding {padding}: corner displacement "
        f"{np.mean(corner_err):.2f} px (max {np.max(corner_err):.2f}), landmark displacement "
        f"{np.mean(landmark_err):.2f} px, pixel correlation {np.mean(corr):.4f} "
        f"(min {np.min(corr):.4f})"
    )
    assert np.mean(corner_err) < 6.0 * scale
    assert np.mean(landmark_err) < 3.0 * scale
    assert np.mean(corr) > 0.9 and np.min(corr) > 0.6


@pytest.mark.parametrize("size", [150, 40])  # 40: dlib goes down its image pyramid first
def test_warp_reproduces_dlib_given_dlib_geometry(lfw_pairs: list, size: int) -> None:
    for rgb, _, shape in lfw_pairs[:10]:
        to_chip = np.linalg.inv(dlib_chip_to_image(dlib.get_face_chip_details(shape, size, 0.25)))
        ours = warp_chip(rgb, to_chip[:2], size).astype(float)
        theirs = np.asarray(dlib.get_face_chip(rgb, shape, size, 0.25), dtype=float)
        assert np.abs(ours - theirs).mean() < 2.0
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999


def test_estimate_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    a, s, t = 0.4, 1.7, np.array([12.0, -30.0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ (s * rot).T + t
    for weights in (None, LANDMARK_WEIGHTS):
        m = estimate_similarity(src, dst, weights)
        assert np.allclose(m, np.hstack([s * rot, t[:, None]]), atol=1e-9)
    mirrored = estimate_similarity(src, dst * [-1, 1])
    assert np.linalg.det(mirrored[:, :2]) > 0  # never a reflection
    with pytest.raises(BadInputError):
        estimate_similarity(np.ones((5, 2)), dst)


def test_align_faces_shapes_and_inputs(lfw_pairs: list) -> None:
    rgb, face, _ = lfw_pairs[0]
    assert align_faces(rgb, []).shape == (0, 150, 150, 3)
    chips = align_faces(rgb, [face, face], size=112)
    assert chips.shape == (2, 112, 112, 3) and chips.dtype == np.uint8
    assert np.array_equal(align_faces(Image.fromarray(rgb), [face], size=112)[0], chips[0])
    # A face hanging off the image edge: the part outside is black, as in dlib.
    shifted = dataclasses.replace(face, landmarks=tuple((x - 120, y) for x, y in face.landmarks))
    edge = align_faces(rgb, [shifted])[0]
    assert (edge[:, :20] == 0).all() and edge[:, 100:].mean() > 20
    bad = dataclasses.replace(face, landmarks=face.landmarks[:4])
    with pytest.raises(BadInputError):
        align_faces(rgb, [bad])
