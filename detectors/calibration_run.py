"""Measure the production face path on a folder of labelled photos and pick ``match_threshold``.

``DIR/<person>/<photo>``: every regular, non-hidden file in a person's folder is one photo of
that person (files directly in ``DIR`` are ignored). Photos are decoded with the gate's own
limits and run through the configured analyzer, so the numbers describe exactly what the gate
does: MTCNN detection, our alignment and the configured embedder. Each photo contributes one
face: the largest confident face whose box contains the image centre, else the face nearest the
centre (LFW's convention: the labelled person is the centred face; bystanders sit at the edges).
Every same-person pair is a genuine pair and every different-person pair an impostor pair; the
metrics and the choice of threshold are ``detectors.calibration``'s, the HTML report
``detectors.calibration_report``'s. Writing the chosen threshold into the configuration is the
CLI's (``consentry calibrate --write-config``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consentry.detectors.analyzer import Analyzer
from consentry.detectors.calibration import (
    STANDARD_FARS,
    ChosenThreshold,
    FarPoint,
    OperatingPoint,
    PairScores,
    Roc,
    best_accuracy,
    choose_threshold,
    pair_scores,
    roc_curve,
    tar_at_fars,
)
from consentry.detectors.detection import DetectedFace
from consentry.detectors.images import decode_image
from consentry.policies import codes
from consentry.policies.errors import BadInputError

BATCH = 16  # photos per analyzer call: large enough to batch, small enough to bound memory


@dataclass(frozen=True, slots=True)
class Photo:
    person: str
    path: Path


@dataclass(frozen=True, slots=True)
class PairError:
    """A pair the chosen threshold gets wrong: a rejected genuine or an accepted impostor."""

    score: float
    genuine: bool
    a: Path
    b: Path


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """Everything measured; ``samples`` are the photos that yielded a face, in embedding order."""

    root: Path
    embedder: str
    samples: tuple[Photo, ...]
    undetected: tuple[Path, ...]
    unreadable: tuple[Path, ...]
    scores: PairScores
    roc: Roc
    at_far: tuple[FarPoint, ...]
    chosen: ChosenThreshold
    best_balanced: OperatingPoint  # LFW-comparable: best (TAR + 1 - FAR) / 2
    errors: tuple[PairError, ...]  # at the chosen threshold, worst first

    @property
    def best(self) -> OperatingPoint:
        return self.chosen.best

    @property
    def people(self) -> int:
        return len({s.person for s in self.samples})

    def as_dict(self) -> dict[str, Any]:
        """The JSON form. ``accuracy`` is the best accuracy (at ``best.threshold``);
        ``threshold`` is the chosen one (what ``--write-config`` writes), see ``chosen``."""

        def point(p: OperatingPoint) -> dict[str, float]:
            return {"threshold": p.threshold, "accuracy": p.accuracy, "tar": p.tar, "far": p.far}

        far_key = {f.target: f"{f.target:.0e}".replace("e-0", "e-") for f in self.at_far}
        return {
            "root": str(self.root),
            "embedder": self.embedder,
            "people": self.people,
            "photos": len(self.samples),
            "pairs": {"genuine": int(self.scores.genuine.size), "impostor": int(self.scores.impostor.size)},
            "accuracy": self.best.accuracy,
            "balanced_accuracy": self.best.balanced_accuracy,
            "threshold": self.chosen.point.threshold,
            "best": point(self.best),
            "best_balanced": point(self.best_balanced)
            | {"balanced_accuracy": self.best_balanced.balanced_accuracy},
            "chosen": point(self.chosen.point) | {"rule": self.chosen.rule, "reason": self.chosen.reason},
            "tar_at_far": {far_key[f.target]: f.point.tar for f in self.at_far},
            "threshold_at_far": {far_key[f.target]: f.point.threshold for f in self.at_far},
            "far_resolved": {far_key[f.target]: f.resolved for f in self.at_far},
            "auc": self.roc.auc,
            "undetected": [str(p) for p in self.undetected],
            "unreadable": [str(p) for p in self.unreadable],
            "errors": [
                {"score": e.score, "genuine": e.genuine, "a": str(e.a), "b": str(e.b)} for e in self.errors
            ],
        }


def scan_photos(root: Path) -> tuple[Photo, ...]:
    """The photo files under ``root``, by person; cheap checks before any model loads."""
    if not root.is_dir():
        raise BadInputError(f"{root} is not a directory", code=codes.CALIBRATE_DIR_MISSING)
    photos = []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(person_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                photos.append(Photo(person_dir.name, path))
    people = {p.person for p in photos}
    if len(people) < 2:
        raise BadInputError(
            f"{root} holds photos of {len(people)} people; calibration needs folders of at least 2 "
            "(DIR/<person>/<photo>)",
            code=codes.CALIBRATE_TOO_FEW_PEOPLE,
        )
    return tuple(photos)


def pick_face(faces: Sequence[DetectedFace], size: tuple[int, int]) -> int:
    """Index of the labelled face: the largest containing the image centre, else the nearest."""
    cx, cy = size[0] / 2.0, size[1] / 2.0
    central = [i for i, f in enumerate(faces) if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
    if central:
        return max(central, key=lambda i: faces[i].width * faces[i].height)
    return min(range(len(faces)), key=lambda i: math.dist(faces[i].center, (cx, cy)))


def calibrate(
    photos: Sequence[Photo],
    analyzer: Analyzer,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    root: Path | None = None,
    target_far: float = 1e-3,
) -> CalibrationResult:
    """Embed one face per photo, score all pairs and choose a threshold (see module doc).

    Raises BadInputError: ``calibrate.no_faces`` (no photo yielded a face),
    ``calibrate.too_few_people`` (faces of fewer than 2 people), ``calibrate.no_genuine_pairs``
    (nobody has 2 photos with a face).
    """
    samples: list[Photo] = []
    vectors: list[np.ndarray] = []
    undetected: list[Path] = []
    unreadable: list[Path] = []
    for start in range(0, len(photos), BATCH):
        batch, images = [], []
        for photo in photos[start : start + BATCH]:
            try:
                data = photo.path.read_bytes()
                images.append(decode_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels))
            except (OSError, BadInputError):  # unreadable, not an image, or over the limits
                unreadable.append(photo.path)
                continue
            batch.append(photo)
        analyzed_batch = analyzer.analyze(images) if images else []
        for photo, image, analyzed in zip(batch, images, analyzed_batch, strict=True):
            if not analyzed.faces:
                undetected.append(photo.path)
                continue
            samples.append(photo)
            vectors.append(analyzed.embeddings[pick_face(analyzed.faces, image.size)])
    _check_samples(samples)
    scores = pair_scores(np.stack(vectors), [s.person for s in samples])
    chosen = choose_threshold(scores.genuine, scores.impostor, target_far=target_far)
    return CalibrationResult(
        root=root or Path(os.path.commonpath([p.path for p in photos])),
        embedder=str(getattr(analyzer.embedder, "name", type(analyzer.embedder).__name__)),
        samples=tuple(samples),
        undetected=tuple(undetected),
        unreadable=tuple(unreadable),
        scores=scores,
        roc=roc_curve(scores.genuine, scores.impostor),
        at_far=tar_at_fars(scores.genuine, scores.impostor, STANDARD_FARS),
        chosen=chosen,
        best_balanced=best_accuracy(scores.genuine, scores.impostor, balanced=True),
        errors=_errors(scores, samples, chosen.point.threshold),
    )


def _check_samples(samples: Sequence[Photo]) -> None:
    if not samples:
        raise BadInputError("no photo has a detectable face", code=codes.CALIBRATE_NO_FACES)
    per_person: dict[str, int] = {}
    for s in samples:
        per_person[s.person] = per_person.get(s.person, 0) + 1
    if len(per_person) < 2:
        raise BadInputError(
            "faces were found for only one person; impostor pairs need at least 2",
            code=codes.CALIBRATE_TOO_FEW_PEOPLE,
        )
    if max(per_person.values()) < 2:
        raise BadInputError(
            "nobody has 2 photos with a detectable face: there are no genuine pairs",
            code=codes.CALIBRATE_NO_GENUINE_PAIRS,
        )


def _errors(scores: PairScores, samples: Sequence[Photo], threshold: float) -> tuple[PairError, ...]:
    out = []
    for genuine, values, pairs in (
        (True, scores.genuine, scores.genuine_pairs),
        (False, scores.impostor, scores.impostor_pairs),
    ):
        wrong = values < threshold if genuine else values >= threshold
        for score, (i, j) in zip(values[wrong], pairs[wrong], strict=True):
            out.append(PairError(float(score), genuine, samples[i].path, samples[j].path))
    # Worst first: the furthest on the wrong side of the threshold.
    return tuple(sorted(out, key=lambda e: -abs(e.score - threshold)))
