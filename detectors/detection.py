"""Face detection with MTCNN, returning plain frozen results.

MTCNN is used because its weights ship inside the facenet-pytorch wheel (nothing is downloaded)
and because it returns five landmarks per face, which is what alignment needs. Inference is our
own batched re-implementation (:mod:`consentry.detectors.mtcnn_batched`: the pyramid of a batch
per scale in one call, R- and O-net over every candidate of the batch at once, fp16 on CUDA); it
matches facenet-pytorch's detector on ../shared/faces (same face counts, box IoU >= 0.99999). The detector is
blocking (torch); the gateway calls it from a worker thread. Inference keeps no state between
calls, so one instance may be shared by several threads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from consentry.detectors.devices import resolve_device
from consentry.detectors.mtcnn_batched import BatchedMTCNN
from consentry.policies.errors import ConfigurationError, StageError

# Tuned on the shared test photos (groups at min_face_px=20, LFW at 40): every real face scored
# >= 0.956 (the lowest, a bystander half cut off by an LFW frame edge; all others >= 0.99), while
# what MTCNN's own last stage (0.7) let through besides scored 0.70-0.72: shrubs in the
# landscape, a hand in a group photo, a mostly hidden face at an LFW frame edge. 0.9 sits in
# that empty gap.
DEFAULT_PROBABILITY = 0.9
# MTCNN's published per-stage thresholds (P-Net, R-Net, O-Net).
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face in one image, in that image's pixel coordinates.

    ``landmarks`` are MTCNN's five points in MTCNN's order: left eye, right eye, nose, mouth
    left, mouth right, where left/right are as seen in the image (the "left eye" is the
    subject's right eye).
    """

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    probability: float
    landmarks: tuple[Point, Point, Point, Point, Point]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def min_side(self) -> float:
        """The shorter box side: what ``min_face_px`` is compared with."""
        return min(self.width, self.height)

    @property
    def center(self) -> Point:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


class FaceDetector:
    """Finds faces and their five landmarks in PIL images.

    ``min_face_px`` is the smallest face searched for (MTCNN's ``min_face_size``); faces whose
    shorter box side comes out below it are dropped too, so the limit is exact rather than
    approximate. ``probability`` is the final confidence cut applied after MTCNN's own stage
    ``thresholds``. Images of the same size are run as one batch (up to ``max_batch``).
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        min_face_px: int = 40,
        probability: float = DEFAULT_PROBABILITY,
        thresholds: Sequence[float] = DEFAULT_STAGE_THRESHOLDS,
        max_batch: int = 8,
    ) -> None:
        if min_face_px < 12:
            # Below P-Net's 12 px window MTCNN would upsample the whole image: slow and noisy.
            raise ConfigurationError(f"min_face_px must be >= 12, got {min_face_px}")
        if not 0.0 <= probability <= 1.0:
            raise ConfigurationError(f"probability must be within [0, 1], got {probability}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ConfigurationError(f"thresholds must be three values in [0, 1]: {thresholds}")
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        self.device = resolve_device(device)
        self.min_face_px = min_face_px
        self.probability = probability
        self.max_batch = max_batch
        self._mtcnn = BatchedMTCNN(
            min_face_size=min_face_px,
            thresholds=tuple(thresholds),
            device=self.device,
            half=self.device.type == "cuda",
        )

    def detect(self, images: Sequence[Image.Image]) -> list[list[DetectedFace]]:
        """Faces per image, in input order, each list sorted by probability (highest first).

        Blocking. Raises StageError when torch fails (out of memory, device lost): the caller's
        stage then fails closed.
        """
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        results: list[list[DetectedFace]] = [[] for _ in rgb]
        # facenet-pytorch batches only equal-sized images, so group by size.
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(rgb):
            # An image smaller than the smallest face cannot hold one; MTCNN would also fail on
            # it (its image pyramid would be empty).
            if min(im.size) >= self.min_face_px:
                by_size[im.size].append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                for i, faces in zip(chunk, self._run([rgb[i] for i in chunk]), strict=True):
                    results[i] = faces
        return results

    def _run(self, batch: list[Image.Image]) -> list[list[DetectedFace]]:
        try:
            boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
        except (RuntimeError, ValueError) as exc:
            raise StageError(f"face detection failed: {exc}") from exc
        return [self._faces(b, p, lm) for b, p, lm in zip(boxes, probs, points, strict=True)]

    def _faces(self, boxes: object, probs: object, points: object) -> list[DetectedFace]:
        if boxes is None:  # facenet-pytorch's "no face in this image"
            return []
        box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        prob_arr = np.asarray(probs, dtype=np.float64).reshape(-1)
        lm_arr = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
        faces = []
        for box, prob, lm in zip(box_arr, prob_arr, lm_arr, strict=True):
            p0, p1, p2, p3, p4 = ((float(x), float(y)) for x, y in lm)  # (5, 2) per face
            face = DetectedFace(
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                probability=float(prob),
                landmarks=(p0, p1, p2, p3, p4),
            )
            if face.probability >= self.probability and face.min_side >= self.min_face_px:
                faces.append(face)
        faces.sort(key=lambda f: f.probability, reverse=True)
        return faces
