"""Head yaw from MTCNN's five landmarks, pose classes and challenges, the plug-in loader.

The yaw formula is checked exactly on the generic face it is derived from (projected at known
angles), and on real photos against their mirrored copies: yaw(mirror) must be -yaw(original).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from consentry.detectors.detection import DetectedFace, FaceDetector
from consentry.detectors.liveness import (
    LivenessFrame,
    Pose,
    PoseCheck,
    PoseThresholds,
    draw_poses,
    head_yaw_deg,
    load_liveness_check,
)
from consentry.policies import codes
from consentry.policies.decision import Verdict
from consentry.policies.errors import BadInputError, ConfigurationError

# The generic face of detectors/liveness.py, in mm: x to the image's right, y down, z toward the
# camera. Order as MTCNN's: left eye, right eye, nose tip, mouth left, mouth right (as seen).
MODEL = np.array([[-31, 0, 0], [31, 0, 0], [0, 35, 31], [-25, 70, 0], [25, 70, 0]], dtype=np.float64)


def project(yaw: float, pitch: float = 0.0, roll: float = 0.0, scale: float = 1.6, shift=(120, 90)):
    """Orthographic image of MODEL turned by yaw (positive: to the subject's left), pitch, roll."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    pitch_m = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    yaw_m = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    pts = (MODEL @ pitch_m.T @ yaw_m.T)[:, :2]
    roll_m = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return [(float(x), float(z)) for x, z in pts @ roll_m.T * scale + np.array(shift)]


@pytest.mark.parametrize("roll", [-25.0, 0.0, 30.0])
@pytest.mark.parametrize("yaw", [-45.0, -20.0, -5.0, 0.0, 12.0, 35.0])
def test_yaw_is_exact_on_the_model_face_whatever_the_roll_scale_and_position(yaw: float, roll: float) -> None:
    assert head_yaw_deg(project(yaw, roll=roll)) == pytest.approx(yaw, abs=1e-9)
    assert head_yaw_deg(project(yaw, roll=roll, scale=0.4, shift=(5, 300))) == pytest.approx(yaw, abs=1e-9)


def test_pitch_only_shrinks_the_estimate_by_its_cosine() -> None:
    # The nose tip is halfway between eyes and mouth on the model, so pitch leaves no sideways
    # term: tan(estimate) = cos(pitch) * tan(yaw).
    for pitch in (-15.0, 15.0):
        estimate = head_yaw_deg(project(30.0, pitch=pitch))
        assert estimate == pytest.approx(
            math.degrees(math.atan(math.cos(math.radians(pitch)) * math.tan(math.radians(30))))
        )
        assert 29.0 < estimate < 30.0


def test_degenerate_landmarks_are_refused() -> None:
    with pytest.raises(BadInputError):
        head_yaw_deg([(1.0, 1.0)] * 5)
    with pytest.raises(BadInputError):
        head_yaw_deg([(1.0, 1.0), (2.0, 1.0), (float("nan"), 2.0), (1.0, 3.0), (2.0, 3.0)])


def test_pose_classes_have_a_dead_band() -> None:
    t = PoseThresholds(front_max_deg=10, turn_min_deg=20)
    assert [t.classify(y) for y in (0.0, 10.0, -10.0, 20.0, 41.0, -20.0, -33.0)] == [
        Pose.front, Pose.front, Pose.front, Pose.left, Pose.left, Pose.right, Pose.right,
    ]  # fmt: skip
    assert t.classify(15.0) is None and t.classify(-19.9) is None and t.classify(10.1) is None
    with pytest.raises(ConfigurationError):
        PoseThresholds(front_max_deg=20, turn_min_deg=20)


def test_drawn_sequences_show_every_pose_and_none_twice_in_a_row() -> None:
    rng = random.Random(7)
    seen = {draw_poses(3, rng) for _ in range(300)}
    # Three poses: every order of left, front, right, and nothing else (no L-R-L, which one
    # turned photo and its mirror image could answer).
    assert seen == set(itertools.permutations(Pose))
    for seq in {draw_poses(5, rng) for _ in range(300)}:
        assert all(a is not b for a, b in itertools.pairwise(seq)) and set(seq) == set(Pose)
    assert all(len(draw_poses(n)) == n for n in (3, 4, 6))  # the system's randomness by default
    with pytest.raises(ConfigurationError):
        draw_poses(2)


# -- real photos ---------------------------------------------------------------------------------


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def lfw_yaws(faces_dir: Path) -> dict[str, tuple[float, float, DetectedFace]]:
    """``person/file`` -> (yaw, yaw of the same face in the mirrored photo, face) for every LFW
    face found in both (bystanders at a frame edge are sometimes found in one only)."""
    detector = FaceDetector(device="cpu", min_face_px=40, max_batch=32)
    paths = sorted((faces_dir / "lfw").glob("*/*.jpg"))
    images = [Image.open(p).convert("RGB") for p in paths]
    found = detector.detect(images + [ImageOps.mirror(im) for im in images])
    out = {}
    for i, (path, image) in enumerate(zip(paths, images, strict=True)):
        for k, face in enumerate(found[i]):
            x1, y1, x2, y2 = face.box
            mirrored = (image.width - x2, y1, image.width - x1, y2)
            twins = [m for m in found[len(paths) + i] if _iou(m.box, mirrored) > 0.5]
            if twins:
                key = f"{path.parent.name}/{path.name}" + (f"#{k}" if k else "")
                out[key] = (head_yaw_deg(face.landmarks), head_yaw_deg(twins[0].landmarks), face)
    return out


@pytest.mark.slow
def test_yaw_of_a_mirrored_photo_is_minus_the_yaw(
    lfw_yaws: dict[str, tuple[float, float, DetectedFace]],
) -> None:
    errors = np.array([abs(y + m) for y, m, _ in lfw_yaws.values()])
    assert len(errors) >= 100  # every labelled face, plus some bystanders
    # Measured: mean 2.6 degrees, 95th percentile 7.6 (bench/results/yaw_estimate.md).
    assert errors.mean() < 4.0 and np.percentile(errors, 95) < 10.0
    # Clear turns never flip side in the mirror.
    clear = [(y, m) for y, m, _ in lfw_yaws.values() if abs(y) >= 15]
    assert len(clear) >= 20 and all(y * m < 0 for y, m in clear)


@pytest.mark.slow
def test_lfw_photos_satisfy_a_pose_only_when_their_yaw_fits(
    lfw_yaws: dict[str, tuple[float, float, DetectedFace]], faces_dir: Path
) -> None:
    check = PoseCheck(PoseThresholds())
    image = Image.new("RGB", (8, 8))

    def passes(key: str, pose: Pose) -> bool:
        return check.check([LivenessFrame(1, pose, image, lfw_yaws[key][2])]).allowed

    # Hugo Chavez turned to his left, facing the camera, turned to his right.
    left, front, right = (
        "Hugo_Chavez/Hugo_Chavez_0003.jpg",
        "Hugo_Chavez/Hugo_Chavez_0010.jpg",
        "Hugo_Chavez/Hugo_Chavez_0006.jpg",
    )
    assert [passes(left, p) for p in Pose] == [True, False, False]
    assert [passes(front, p) for p in Pose] == [False, True, False]
    assert [passes(right, p) for p in Pose] == [False, False, True]
    # Over all photos: a frontal photo never passes a turn, a turned one never passes front.
    frontal = [k for k, (y, _, _) in lfw_yaws.items() if abs(y) <= 10]
    turned = [k for k, (y, _, _) in lfw_yaws.items() if abs(y) >= 20]
    assert len(frontal) >= 40 and len(turned) >= 10
    assert not any(passes(k, Pose.left) or passes(k, Pose.right) for k in frontal)
    assert not any(passes(k, Pose.front) for k in turned)
    refused = check.check([LivenessFrame(2, Pose.left, image, lfw_yaws[front][2])])
    assert refused.code == codes.LIVENESS_POSE_MISMATCH and refused.scores["frame"] == 2
    assert "asked left" in refused.reason and "reads as front" in refused.reason


# -- the plug-in loader --------------------------------------------------------------------------


class BrightnessCheck:
    """A deployment's own check, loaded by import path in the tests below."""

    name = "brightness"

    def __init__(self, weights: Path | None) -> None:
        self.weights = weights

    def check(self, frames: Sequence[LivenessFrame]) -> Verdict:
        dark = [f.number for f in frames if np.asarray(f.image.convert("L")).mean() < 30]
        if dark:
            return Verdict.refuse(codes.LIVENESS_MODEL_REFUSED, f"frame {dark[0]} is too dark to judge")
        return Verdict.allow("bright enough")


def broken_factory(weights: Path | None) -> BrightnessCheck:
    raise RuntimeError("weights do not load")


def not_a_check(weights: Path | None) -> object:
    return object()


def test_a_liveness_model_is_loaded_by_import_path(tmp_path: Path) -> None:
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    check = load_liveness_check(f"{__name__}:BrightnessCheck", weights)
    assert isinstance(check, BrightnessCheck) and check.weights == weights
    for spec, path in [
        ("tests.detectors.no_such_module:make", None),
        (f"{__name__}:missing", None),
        (f"{__name__}:broken_factory", None),
        (f"{__name__}:not_a_check", None),
        (f"{__name__}:BrightnessCheck", tmp_path / "absent.bin"),
    ]:
        with pytest.raises(ConfigurationError) as err:
            load_liveness_check(spec, path)
        assert err.value.code == codes.LIVENESS_MODEL_INVALID
