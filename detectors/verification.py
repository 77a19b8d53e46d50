"""The face rules of the gate, over index scores. Pure functions: no models, no storage.

Reference images (before generation): every face must be the subject. A face that is another
enrolled identity is ``face.protected_identity``; a face that is nobody enrolled is
``face.unknown`` unless the deployment allows unknown faces; an image with no face is
``face.none`` (a reference must show the person it is a reference for).

Outputs (after generation): no face may be another enrolled identity; every face must be the
subject; an output with no face is allowed unless the deployment requires one, because an image
without a face carries no likeness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from consentry.policies import codes
from consentry.policies.decision import Verdict

if TYPE_CHECKING:
    from consentry.detectors.index import IdentityScores


def _scores(subject_best: float, other_best: float, faces: int) -> dict[str, float]:
    return {"faces": float(faces), "subject_min": subject_best, "other_max": other_best}


def judge_references(
    per_image: Sequence[IdentityScores], *, subject: str, threshold: float, allow_unknown: bool
) -> Verdict:
    subject_min, other_max, faces = 1.0, -1.0, 0
    for image_no, scores in enumerate(per_image, start=1):
        n = scores.scores.shape[0]
        if n == 0:
            return Verdict.refuse(codes.FACE_NONE, f"reference image {image_no} shows no face")
        for face in range(n):
            faces += 1
            mine = scores.of(face, subject)
            other, other_score = scores.best(face, exclude=subject)
            subject_min, other_max = min(subject_min, mine), max(other_max, other_score)
            where = f"face {face + 1} of reference image {image_no}"
            if other is not None and other_score >= threshold and other_score > mine:
                return Verdict.refuse(
                    codes.FACE_PROTECTED,
                    f"{where} matches another protected identity",
                    **_scores(mine, other_score, faces),
                )
            if mine < threshold and not allow_unknown:
                return Verdict.refuse(
                    codes.FACE_UNKNOWN,
                    f"{where} does not match the subject (similarity {mine:.3f} < {threshold:.3f})",
                    **_scores(mine, other_score, faces),
                )
    reason = f"{faces} reference face(s) match the subject"
    return Verdict.allow(reason, **_scores(subject_min, other_max, faces))


def judge_outputs(
    per_image: Sequence[IdentityScores],
    *,
    subject: str,
    threshold: float,
    require_face: bool,
    subject_threshold: float | None = None,
) -> Verdict:
    """``threshold`` protects other identities; ``subject_threshold`` (default: the same) is how
    much like the subject a generated face must be. Generated likenesses score lower against a
    person's photos than other photos of them do, so deployments set it lower."""
    likeness = threshold if subject_threshold is None else subject_threshold
    subject_min, other_max, faces = 1.0, -1.0, 0
    for image_no, scores in enumerate(per_image, start=1):
        n = scores.scores.shape[0]
        if n == 0 and require_face:
            return Verdict.refuse(codes.OUTPUT_MISMATCH, f"output {image_no} shows no face of the subject")
        for face in range(n):
            faces += 1
            mine = scores.of(face, subject)
            other, other_score = scores.best(face, exclude=subject)
            subject_min, other_max = min(subject_min, mine), max(other_max, other_score)
            if other is not None and other_score >= threshold:
                return Verdict.refuse(
                    codes.OUTPUT_PROTECTED,
                    f"a face in output {image_no} matches another protected identity",
                    **_scores(mine, other_score, faces),
                )
            if mine < likeness:
                return Verdict.refuse(
                    codes.OUTPUT_MISMATCH,
                    f"a face in output {image_no} is not the subject "
                    f"(similarity {mine:.3f} < {likeness:.3f})",
                    **_scores(mine, other_score, faces),
                )
    reason = f"{faces} face(s) in outputs, all the subject" if faces else "no face in outputs"
    return Verdict.allow(reason, **_scores(subject_min if faces else 0.0, other_max, faces))


def judge_unnamed(
    per_image: Sequence[IdentityScores], *, threshold: float, allow_unknown: bool, outputs: bool
) -> Verdict:
    """Traffic that names no subject: no face, in a reference or an output, may be an enrolled
    (protected) identity. Faces of nobody enrolled are allowed unless the deployment refuses
    unknown faces; images without faces are always allowed (they carry no likeness)."""
    where_kind = "output" if outputs else "reference image"
    protected = codes.OUTPUT_PROTECTED if outputs else codes.FACE_PROTECTED
    unknown = codes.OUTPUT_UNKNOWN_FACE if outputs else codes.FACE_UNKNOWN
    other_max, faces = -1.0, 0
    for image_no, scores in enumerate(per_image, start=1):
        for face in range(scores.scores.shape[0]):
            faces += 1
            who, score = scores.best(face)
            other_max = max(other_max, score)
            detail = {"faces": float(faces), "other_max": score}
            if who is not None and score >= threshold:
                reason = f"face {face + 1} of {where_kind} {image_no} matches a protected identity"
                return Verdict.refuse(protected, reason, **detail)
            if not allow_unknown:
                reason = (
                    f"face {face + 1} of {where_kind} {image_no} is a real person's face that is not enrolled"
                )
                return Verdict.refuse(unknown, reason, **detail)
    reason = f"{faces} face(s), none of a protected identity" if faces else f"no face in any {where_kind}"
    return Verdict.allow(reason, faces=float(faces), other_max=other_max)
