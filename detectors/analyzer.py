"""Detect, align and embed every face in a batch of images: the one call the gate makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from consentry.detectors.align import align_faces
from consentry.detectors.detection import DetectedFace, FaceDetector
from consentry.detectors.embedders import Embedder


@dataclass(frozen=True, slots=True)
class AnalyzedImage:
    """The faces found in one image and their L2-normalised embeddings (row-aligned)."""

    faces: tuple[DetectedFace, ...]
    embeddings: np.ndarray  # (n_faces, dim) float32


class Analyzer(Protocol):
    """What the gate needs of face analysis: every face of every image, embedded.

    :class:`FaceAnalyzer` (MTCNN + alignment + an embedder) is the real one; the gate's own
    test fakes (:mod:`consentry.gateway.testing`) implement the same Protocol.
    """

    @property
    def embedder(self) -> Embedder: ...

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        """Blocking; the gateway calls it in a worker thread."""
        ...


class FaceAnalyzer:
    def __init__(self, detector: FaceDetector, embedder: Embedder) -> None:
        self.detector = detector
        self.embedder = embedder

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        """Blocking (torch); the gateway calls it in a worker thread."""
        detections = self.detector.detect(list(images))
        chips: list[np.ndarray] = []
        for image, faces in zip(images, detections, strict=True):
            if faces:
                chips.append(
                    align_faces(
                        image,
                        faces,
                        size=self.embedder.chip_size,
                        padding=self.embedder.chip_padding,
                    )
                )
        # One embedder call for all faces of all images keeps the batch large.
        embedded = self.embedder.embed(np.concatenate(chips)) if chips else np.zeros((0, self.embedder.dim))
        out: list[AnalyzedImage] = []
        start = 0
        for faces in detections:
            out.append(AnalyzedImage(tuple(faces), embedded[start : start + len(faces)].astype(np.float32)))
            start += len(faces)
        return out
