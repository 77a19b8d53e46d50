"""Liveness for self-enrollment: head yaw from MTCNN's five landmarks, pose challenges, and the
``LivenessCheck`` Protocol a deployment implements to add a stronger model.

**Yaw from five landmarks.** Take a generic adult face (round figures of adult anthropometry,
not measured here): pupils ``IOD`` = 62 mm apart, the mouth corners below them at the same
depth, the nose tip ``D`` = 31 mm in front of both. Turn it by yaw ``θ`` about the vertical axis
and project it orthographically: a point at depth ``z`` moves sideways by ``z·sin θ``, so the
nose tip moves ``D·sin θ`` relative to the midpoint of the eye midpoint and the mouth midpoint
(both on the face's symmetry plane, at depth 0), while the eyes come closer, ``IOD·cos θ``.
Hence, after removing roll (measuring along the eye line),

    tan θ = (IOD / D) · offset / iod,   offset = nose_x − (eye_mid_x + mouth_mid_x) / 2,

with ``iod`` the measured distance between the eyes. ``K = IOD / D = 2``. Pitch moves the nose
up or down, not along the eye line, so it barely changes the estimate. The estimate is exact
for the model face; for real faces its *scale* depends on how far each nose stands out (no
pose-labelled photos are available offline to calibrate it), so the pose thresholds are in these
estimated degrees. Its *symmetry* is measured: on ../shared/faces the yaw of a mirrored copy is
minus the original's within 2.6° on average (``bench/yaw_estimate.py``).

Sign: yaw is positive when the subject turns toward their own left, i.e. their nose moves to
the image's right in an unmirrored photo (as a camera sees them; a selfie preview is mirrored,
the captured frame is not).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from consentry.policies import codes
from consentry.policies.decision import Verdict
from consentry.policies.errors import BadInputError, ConfigurationError

if TYPE_CHECKING:
    from PIL import Image

    from consentry.detectors.detection import DetectedFace

MODEL_IOD_MM = 62.0
"""Distance between the pupils of the generic face."""
MODEL_NOSE_DEPTH_MM = 31.0
"""How far the nose tip of the generic face stands in front of its eyes and mouth corners."""
K = MODEL_IOD_MM / MODEL_NOSE_DEPTH_MM


class Pose(StrEnum):
    """A head pose a challenge asks for. ``left`` / ``right`` are the subject's own."""

    left = "left"
    front = "front"
    right = "right"


def head_yaw_deg(landmarks: Sequence[tuple[float, float]]) -> float:
    """Estimated head yaw in degrees from MTCNN's five landmarks (left eye, right eye, nose,
    mouth left, mouth right, as seen in the image); positive: turned to the subject's left."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise BadInputError("expected 5 finite (x, y) landmarks")
    eye_line = pts[1] - pts[0]
    iod = float(np.hypot(*eye_line))
    if iod < 1e-6:
        raise BadInputError("degenerate landmarks: the eyes coincide")
    # Coordinates along the eye line, from the eye midpoint: this removes roll.
    along = (pts - (pts[0] + pts[1]) / 2.0) @ (eye_line / iod)
    mouth_mid = (along[3] + along[4]) / 2.0
    offset = along[2] - (0.0 + mouth_mid) / 2.0
    return math.degrees(math.atan(K * offset / iod))


@dataclass(frozen=True, slots=True)
class PoseThresholds:
    """Which estimated yaws count as which pose; between the two is a dead band (no pose)."""

    front_max_deg: float = 10.0
    """``|yaw|`` at most this is ``front``."""
    turn_min_deg: float = 20.0
    """``yaw`` at least this is ``left``; at most minus this is ``right``."""

    def __post_init__(self) -> None:
        if not 0 < self.front_max_deg < self.turn_min_deg < 90:
            raise ConfigurationError(
                f"need 0 < front_max_deg < turn_min_deg < 90, got {self.front_max_deg}, {self.turn_min_deg}"
            )

    def classify(self, yaw_deg: float) -> Pose | None:
        """The pose a yaw shows, or None inside the dead band."""
        if abs(yaw_deg) <= self.front_max_deg:
            return Pose.front
        if yaw_deg >= self.turn_min_deg:
            return Pose.left
        if yaw_deg <= -self.turn_min_deg:
            return Pose.right
        return None


def draw_poses(count: int, rng: random.Random | None = None) -> tuple[Pose, ...]:
    """A random pose sequence with every pose in it and none twice in a row: one still photo,
    even with its mirror image (the opposite turn), or a single head turn cannot answer it.
    ``rng`` defaults to the operating system's randomness."""
    if count < len(Pose):
        raise ConfigurationError(f"a challenge needs at least {len(Pose)} poses, got {count}")
    rng = rng or random.SystemRandom()
    while True:
        seq = [rng.choice(list(Pose))]
        while len(seq) < count:
            seq.append(rng.choice([p for p in Pose if p is not seq[-1]]))
        if set(seq) == set(Pose):
            return tuple(seq)


@dataclass(frozen=True, slots=True)
class LivenessFrame:
    """One answered frame: the decoded image, its one face, and the pose it was asked for."""

    number: int
    """1-based position in the answer."""
    requested: Pose
    image: Image.Image
    face: DetectedFace


@runtime_checkable
class LivenessCheck(Protocol):
    """A check of the answered frames; every configured check must allow them.

    :class:`PoseCheck` is always on. A deployment adds a stronger model (e.g. passive
    anti-spoofing on each face crop) by naming a factory in the policy file:
    ``liveness_model = "package.module:factory"``, called once at gate start with
    ``liveness_model_weights`` (a path, or None) and returning an object with ``name`` and
    ``check``. ``check`` is blocking (the gate runs it in a worker thread); it returns
    ``Verdict.allow(...)`` or ``Verdict.refuse(any_code, reason)`` (reported as
    ``liveness.model_refused`` with its reason); raising fails the enrollment closed.
    """

    @property
    def name(self) -> str: ...

    def check(self, frames: Sequence[LivenessFrame]) -> Verdict: ...


class PoseCheck:
    """Each frame's head yaw must show the pose asked for it."""

    name = "landmark-yaw-v1"

    def __init__(self, thresholds: PoseThresholds) -> None:
        self.thresholds = thresholds

    def check(self, frames: Sequence[LivenessFrame]) -> Verdict:
        yaws: dict[str, float] = {}
        for frame in frames:
            yaw = head_yaw_deg(frame.face.landmarks)
            yaws[f"yaw_deg_{frame.number}"] = yaw
            seen = self.thresholds.classify(yaw)
            if seen is not frame.requested:
                shown = seen.value if seen else "between poses"
                return Verdict.refuse(
                    codes.LIVENESS_POSE_MISMATCH,
                    f"frame {frame.number}: asked {frame.requested.value}, the head yaw {yaw:+.1f}° "
                    f"reads as {shown}",
                    frame=frame.number,
                    yaw_deg=yaw,
                )
        return Verdict.allow("every frame shows the pose asked for it", **yaws)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    return unit


def judge_same_person(frame_embeddings: np.ndarray, threshold: float) -> Verdict:
    """Every pair of frames must be one person (cosine at or above ``threshold``)."""
    e = _unit(frame_embeddings)
    sims = e @ e.T
    worst, pair = 1.0, (1, 1)
    for i in range(len(e)):
        for j in range(i + 1, len(e)):
            if sims[i, j] < worst:
                worst, pair = float(sims[i, j]), (i + 1, j + 1)
    if worst < threshold:
        return Verdict.refuse(
            codes.LIVENESS_PERSON_CHANGED,
            f"frames {pair[0]} and {pair[1]} are not the same person (similarity {worst:.3f})",
            frame=pair[1],
            similarity=worst,
        )
    return Verdict.allow("every frame shows the same person", min_similarity=worst)


def judge_reference(frame_embeddings: np.ndarray, templates: np.ndarray, threshold: float) -> Verdict:
    """Every frame must match the mean of the reference photos' templates."""
    centre = _unit(_unit(templates).mean(axis=0))
    sims = _unit(frame_embeddings) @ centre
    worst = int(np.argmin(sims))
    if sims[worst] < threshold:
        return Verdict.refuse(
            codes.LIVENESS_REFERENCE_MISMATCH,
            f"frame {worst + 1} does not match the reference photos (similarity {sims[worst]:.3f})",
            frame=worst + 1,
            similarity=float(sims[worst]),
        )
    return Verdict.allow("the frames match the reference photos", min_similarity=float(sims[worst]))


def load_liveness_check(spec: str, weights: Path | None) -> LivenessCheck:
    """Import ``package.module:factory`` and build the deployment's check with ``weights``."""
    module_name, _, attr = spec.partition(":")
    try:
        factory: Callable[[Path | None], object] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(
            f"liveness_model {spec!r} cannot be imported: {exc}", code=codes.LIVENESS_MODEL_INVALID
        ) from exc
    if weights is not None and not weights.exists():
        raise ConfigurationError(
            f"liveness_model_weights {weights} does not exist", code=codes.LIVENESS_MODEL_INVALID
        )
    try:
        check = factory(weights)
    except Exception as exc:  # the deployment's own code: any failure stops the gate, said so
        raise ConfigurationError(
            f"liveness_model {spec!r} failed to start: {exc}", code=codes.LIVENESS_MODEL_INVALID
        ) from exc
    if not isinstance(check, LivenessCheck):
        raise ConfigurationError(
            f"liveness_model {spec!r} returned {type(check).__name__}, which has no name and check()",
            code=codes.LIVENESS_MODEL_INVALID,
        )
    return check
