"""Quality rules for enrollment photos. Every refusal names the offending photo (1-based)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from consentry.detectors.analyzer import AnalyzedImage
from consentry.detectors.index import IdentityIndex, normalise
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConflictError


def face_size(box: tuple[float, float, float, float]) -> float:
    """A face's size in pixels: the geometric mean of its box sides. MTCNN's boxes are tight and
    taller than wide (about 80 x 113 px for an LFW face), so neither side alone is the face."""
    return float(((box[2] - box[0]) * (box[3] - box[1])) ** 0.5)


def enrollment_templates(
    photos: Sequence[AnalyzedImage],
    *,
    min_photos: int,
    min_face_px: int,
    threshold: float,
    existing: IdentityIndex,
) -> np.ndarray:
    """The templates to store for a new identity, or a BadInputError / ConflictError saying why not.

    Each photo must show exactly one face of at least ``min_face_px`` (smaller background faces
    are ignored); every face must match the others (its similarity to the mean of the others is
    at least ``threshold``); and the set may not already be an enrolled identity.
    """
    if len(photos) < min_photos:
        raise BadInputError(
            f"enrollment needs at least {min_photos} photos, got {len(photos)}",
            code=codes.ENROLL_TOO_FEW_PHOTOS,
        )
    rows = []
    for number, photo in enumerate(photos, start=1):
        big = [i for i, face in enumerate(photo.faces) if face_size(face.box) >= min_face_px]
        if len(big) != 1:
            what = "no face" if not big else f"{len(big)} faces"
            raise BadInputError(
                f"photo {number} shows {what} of at least {min_face_px} px; exactly one is required",
                code=codes.ENROLL_FACE_COUNT,
                photo=number,
            )
        rows.append(photo.embeddings[big[0]])
    templates = normalise(np.stack(rows))
    for number in range(len(templates)):
        others = np.delete(templates, number, axis=0).mean(axis=0)
        similarity = float(templates[number] @ (others / np.linalg.norm(others)))
        if similarity < threshold:
            raise BadInputError(
                f"photo {number + 1} does not match the other photos (similarity {similarity:.3f})",
                code=codes.ENROLL_INCONSISTENT,
                photo=number + 1,
            )
    # A duplicate is a whole set that matches an enrolled identity: the mean over the new photos
    # of their best similarity to that identity. One look-alike photo is not a duplicate (people
    # who resemble each other reach single-pair similarities near the threshold).
    scores = existing.scores(templates)
    if len(scores.identities):
        mean = scores.scores.mean(axis=0)
        column = int(np.argmax(mean))
        if mean[column] >= threshold:
            closest = int(np.argmax(scores.scores[:, column])) + 1
            raise ConflictError(
                f"these photos show a face already enrolled as another identity (photo {closest} most "
                f"clearly; mean similarity {mean[column]:.3f})",
                code=codes.ENROLL_DUPLICATE_IDENTITY,
                photo=closest,
            )
    return templates
