"""Derive the MTCNN landmark template that makes our chips match dlib's face chips.

dlib's face-recognition ResNet was trained on chips cut by ``dlib.get_face_chip`` from dlib's
own 5-point landmarks (eye corners and the base of the nose). MTCNN gives different points
(eye centres, nose tip, mouth corners), so dlib's template cannot be reused. Instead, on the LFW
photos, we run dlib's pipeline (HOG detector, 5-point shape predictor, get_face_chip_details)
and MTCNN on the same photo, map MTCNN's landmarks into dlib's chip (size 150, padding 0.25)
through the chip's exact image->chip transform, and average. The printed template is pasted
into ``detectors/align.py`` (TEMPLATE_150).

The fit weights (LANDMARK_WEIGHTS) are picked on a grid over five of the ten LFW people and
checked on the other five, both ways round. Finally the script aligns every face with what
align.py holds now and reports how far our chips are from dlib's.

Run: .venv/bin/python bench/derive_align_template.py [faces_dir]
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from consentry.detectors.align import (  # noqa: E402
    LANDMARK_WEIGHTS,
    align_faces,
    estimate_similarity,
    face_template,
)
from consentry.detectors.detection import FaceDetector  # noqa: E402

SIZE, PADDING = 150, 0.25
CORNERS = np.array([[0, 0, 1], [SIZE - 1, 0, 1], [0, SIZE - 1, 1], [SIZE - 1, SIZE - 1, 1.0]])


@dataclass
class Pair:
    """One LFW face seen by both pipelines."""

    path: Path
    person: str
    landmarks: np.ndarray  # MTCNN, image pixels (5, 2)
    chip_to_image: np.ndarray  # dlib's chip -> image, 3x3
    dlib_chip: np.ndarray
    rgb: np.ndarray

    @property
    def in_chip(self) -> np.ndarray:
        """MTCNN's landmarks in dlib's chip pixels."""
        lm = np.hstack([self.landmarks, np.ones((5, 1))])
        return (np.linalg.inv(self.chip_to_image) @ lm.T).T[:, :2]


def models_dir() -> Path:
    """face_recognition_models' folder, found without importing it (its import is slow)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def dlib_chip_to_image(details: dlib.chip_details) -> np.ndarray:
    """3x3 matrix mapping dlib chip pixels to image pixels.

    dlib puts chip pixels (0, 0), (cols-1, 0) and (0, rows-1) on the corners tl, tr, bl of
    ``details.rect`` rotated by ``details.angle`` about the rect's centre. (Checked: warping
    with this matrix reproduces dlib's own chip to within 0.5 grey levels.)
    """
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    c, s = np.cos(details.angle), np.sin(details.angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - cx, y - cy
        return cx + c * dx - s * dy, cy + s * dx + c * dy

    src = np.array([[0, 0], [details.cols - 1, 0], [0, details.rows - 1]], dtype=np.float32)
    dst = np.array(
        [rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.left(), r.bottom())], dtype=np.float32
    )
    return np.vstack([cv2.getAffineTransform(src, dst), [0.0, 0.0, 1.0]])


def collect(faces_dir: Path) -> list[Pair]:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models_dir() / "shape_predictor_5_face_landmarks.dat"))
    mtcnn = FaceDetector(device="cpu")
    pairs = []
    for path in sorted(faces_dir.glob("lfw/*/*.jpg")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        cx, cy = rgb.shape[1] / 2.0, rgb.shape[0] / 2.0
        dets = list(detector(rgb, 1))
        faces = mtcnn.detect([Image.fromarray(rgb)])[0]
        if not dets or not faces:
            print(f"skip {path.name}: dlib {len(dets)} faces, MTCNN {len(faces)}")
            continue
        # The labelled LFW face is the centred one; pick it in both pipelines.
        det = min(dets, key=lambda d: np.hypot(d.dcenter().x - cx, d.dcenter().y - cy))
        face = min(faces, key=lambda f: np.hypot(f.center[0] - cx, f.center[1] - cy))
        x1, y1, x2, y2 = face.box
        if not (x1 <= det.dcenter().x <= x2 and y1 <= det.dcenter().y <= y2):
            print(f"skip {path.name}: the two detectors picked different faces")
            continue
        shape = predictor(rgb, det)
        details = dlib.get_face_chip_details(shape, size=SIZE, padding=PADDING)
        chip = np.asarray(dlib.get_face_chip(rgb, shape, size=SIZE, padding=PADDING))
        pairs.append(
            Pair(path, path.parent.name, np.asarray(face.landmarks), dlib_chip_to_image(details),
                 chip, rgb)
        )  # fmt: skip
    return pairs


def corner_error(pair: Pair, template: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean distance (dlib chip pixels) between our chip's corners and dlib's."""
    ours = np.vstack([estimate_similarity(pair.landmarks, template, weights), [0, 0, 1]])
    ours_in_dlib = np.linalg.inv(pair.chip_to_image) @ np.linalg.inv(ours) @ CORNERS.T
    return float(np.linalg.norm(ours_in_dlib.T[:, :2] - CORNERS[:, :2], axis=1).mean())


def mean_error(pairs: list[Pair], template: np.ndarray, weights: np.ndarray | None) -> float:
    return float(np.mean([corner_error(p, template, weights) for p in pairs]))


def main(faces_dir: Path) -> None:
    pairs = collect(faces_dir)
    pts = np.stack([p.in_chip for p in pairs])
    template, std = pts.mean(axis=0), pts.std(axis=0)
    print(f"{len(pairs)} faces; template at size 150, padding 0.25 (chip pixels):")
    for (x, y), (sx, sy) in zip(template, std, strict=True):
        print(f"    [{x:.4f}, {y:.4f}],  # std {sx:.2f}, {sy:.2f}")

    people = sorted({p.person for p in pairs})
    halves = [[p for p in pairs if p.person in people[:5]], [p for p in pairs if p.person in people[5:]]]
    grid = [
        np.array([we, we, wn, wm, wm])
        for we, wn, wm in itertools.product([1, 2, 4, 6, 10], [0.5, 1, 2, 4], [0.125, 0.25, 0.5, 1])
    ]
    for train, test in (halves, halves[::-1]):
        t = np.stack([p.in_chip for p in train]).mean(axis=0)
        best = min(grid, key=lambda w: mean_error(train, t, w))
        print(
            f"weights tuned on {len(train)} faces: {best.tolist()}; held-out corner error "
            f"{mean_error(test, t, best):.2f} px (unweighted {mean_error(test, t, None):.2f}, "
            f"align.py's {mean_error(test, t, LANDMARK_WEIGHTS):.2f})"
        )

    # What align.py holds now, against dlib's chips.
    held = face_template(SIZE, PADDING)
    corr = []
    for p in pairs:
        lm_face = type("Face", (), {"landmarks": p.landmarks})()
        ours = align_faces(p.rgb, [lm_face], size=SIZE, padding=PADDING)[0]
        corr.append(np.corrcoef(ours.ravel().astype(float), p.dlib_chip.ravel().astype(float))[0, 1])
    errs = [corner_error(p, held, LANDMARK_WEIGHTS) for p in pairs]
    print(
        f"align.py vs dlib on {len(pairs)} faces: corner displacement mean {np.mean(errs):.2f} px "
        f"(median {np.median(errs):.2f}, max {np.max(errs):.2f}); pixel correlation mean "
        f"{np.mean(corr):.4f} (min {np.min(corr):.4f})"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "faces")
