"""Cut aligned face chips that reproduce the geometry of dlib's ``get_face_chip``.

The default embedder is dlib's face-recognition ResNet, which was trained on chips that
``dlib.get_face_chip(img, shape_5pt, size=150, padding=0.25)`` cuts from dlib's own 5-point
landmarks. We detect with MTCNN, whose five points are different (eye centres, nose tip, mouth
corners), so we map MTCNN's points onto a template expressed in dlib's chip frame: a least
squares similarity transform (rotation, uniform scale, translation; weighted Umeyama) from the
five landmarks to the template, then one bilinear warp.

The template was measured, not guessed: ``bench/derive_align_template.py`` runs dlib's pipeline
(HOG detector, ``shape_predictor_5_face_landmarks.dat``, ``get_face_chip_details``) and MTCNN on
the same LFW photos, maps MTCNN's landmarks into dlib's 150 px / padding 0.25 chip through the
chip's exact image-to-chip transform, and averages them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from consentry.policies.errors import BadInputError

# Mean position of MTCNN's landmarks (left eye, right eye, nose, mouth left, mouth right, as
# seen in the image) inside dlib's face chip of size 150, padding 0.25, in chip pixels. Derived
# by bench/derive_align_template.py from the 100 LFW faces; the per-point spread (std 1.7-2 px
# for the eyes, 4-6 px for nose and mouth) is pose and expression that dlib's eye-corner and
# nose-base points do not follow.
TEMPLATE_SIZE = 150
TEMPLATE_PADDING = 0.25
TEMPLATE_150 = np.array(
    [
        [48.0260, 45.9219],
        [102.4149, 45.4576],
        [74.2055, 79.1193],
        [51.5225, 106.8956],
        [99.8477, 106.6563],
    ]
)
# Relative weight of each landmark in the least-squares fit. dlib's chip is set by four eye
# corners and the nose base, so MTCNN's eyes predict it best and its mouth corners (which move
# with expression and are not among dlib's points) worst. Chosen on a grid over five LFW people
# and checked on the other five, both ways round (bench/derive_align_template.py): on the
# held-out people it cuts the mean corner displacement against dlib's 150 px chips from
# 6.6 / 8.2 px (equal weights) to 4.4 / 4.7 px.
LANDMARK_WEIGHTS = np.array([6.0, 6.0, 2.0, 0.125, 0.125])


class HasLandmarks(Protocol):
    """Anything with MTCNN's five landmarks in image pixels (e.g. ``DetectedFace``)."""

    @property
    def landmarks(self) -> Sequence[tuple[float, float]]: ...


def _unit_template() -> np.ndarray:
    """The template in dlib's padding-free unit face frame.

    dlib places a unit-frame point t at chip pixel ``(padding + t) / (1 + 2 padding) * (size - 1)``
    (its chip spans ``size`` times the similarity scale, sampled at ``size`` pixel centres from
    0 to size - 1), so this inverts that for the size and padding the template was measured at.
    """
    p = TEMPLATE_PADDING
    return TEMPLATE_150 / (TEMPLATE_SIZE - 1) * (1 + 2 * p) - p


_UNIT_TEMPLATE = _unit_template()


def face_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The 5x2 landmark template in chip pixels for a chip of ``size`` and ``padding``, scaled
    the way dlib scales its own template, so other sizes cut the same face region as dlib."""
    if size < 2 or padding < 0:
        raise BadInputError(f"invalid chip size {size} or padding {padding}")
    return (padding + _UNIT_TEMPLATE) / (1 + 2 * padding) * (size - 1)


def estimate_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """2x3 matrix of the similarity transform that best maps ``src`` points onto ``dst`` in the
    (weighted) least-squares sense (Umeyama 1991), without reflection."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = float(w @ (s_c**2).sum(axis=1))
    if var_s <= 1e-12:
        raise BadInputError("degenerate landmarks: all points coincide")
    u, sig, vt = np.linalg.svd((d_c * w[:, None]).T @ s_c)
    # Force a proper rotation: a mirrored face is not the same geometry.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_s)
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def warp_chip(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut one ``size`` x ``size`` chip given the 2x3 image-to-chip ``matrix``.

    Like dlib, go down a Gaussian pyramid first when the chip is much smaller than the face,
    because bilinear sampling at a large step aliases. dlib descends while the face region,
    halved, is still larger than the chip, i.e. while there are fewer than 0.5 chip pixels per
    image pixel.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not np.isfinite(scale) or scale <= 1e-6:
        raise BadInputError("degenerate face geometry: landmarks give no usable scale")
    levels = 0
    while scale * 2**levels < 0.5:
        levels += 1
    if levels == 0:
        src, m = rgb, matrix
    else:
        # Only the region under the chip (plus the filter's reach) is filtered, not the image.
        inv = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]])
        pts = corners @ inv.T
        margin = 2 ** (levels + 1) + 2
        h, w = rgb.shape[:2]
        x0 = int(np.clip(np.floor(pts[:, 0].min()) - margin, 0, w))
        x1 = int(np.clip(np.ceil(pts[:, 0].max()) + margin + 1, 0, w))
        y0 = int(np.clip(np.floor(pts[:, 1].min()) - margin, 0, h))
        y1 = int(np.clip(np.ceil(pts[:, 1].max()) + margin + 1, 0, h))
        if x1 - x0 < 2 or y1 - y0 < 2:  # the chip lies outside the image: all black
            return np.zeros((size, size, 3), dtype=np.uint8)
        src = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        for _ in range(levels):
            src = cv2.pyrDown(src)
        # cv2.pyrDown centres output pixel i on input pixel 2i, so a crop point p sits at
        # p / 2**levels in the reduced image. dlib's pyramid is not where its geometry says:
        # pyramid_down<2> maps points as p/2 - (1.25, 0.75) but centres its filter on 2q + 2,
        # so its chips sample (2**(levels+1) - 2) * (-0.25, +0.25) source pixels off. We copy
        # that offset (measured: mean abs difference to dlib's 40 px chips drops from 3.3 to
        # 1.2 grey levels), as the embedder was trained on dlib's chips.
        offset = (2 ** (levels + 1) - 2) * np.array([-0.25, 0.25])
        m = matrix.copy()
        m[:, 2] += m[:, :2] @ (np.array([x0, y0], dtype=np.float64) - offset)
        m[:, :2] *= 2**levels
    return cv2.warpAffine(
        src,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def align_faces(
    image: Image.Image | np.ndarray,
    faces: Sequence[HasLandmarks],
    *,
    size: int = 150,
    padding: float = 0.25,
) -> np.ndarray:
    """Aligned RGB chips, uint8 of shape (len(faces), size, size, 3), in ``faces`` order.

    ``image`` is a PIL image (converted to RGB) or an HxWx3 uint8 RGB array. Chip areas
    outside the image are black, as in dlib.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInputError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    template = face_template(size, padding)
    chips = np.zeros((len(faces), size, size, 3), dtype=np.uint8)
    for i, face in enumerate(faces):
        landmarks = np.asarray(face.landmarks, dtype=np.float64)
        if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
            raise BadInputError(f"face {i}: expected 5 finite (x, y) landmarks")
        matrix = estimate_similarity(landmarks, template, LANDMARK_WEIGHTS)
        chips[i] = warp_chip(rgb, matrix, size)
    return chips
