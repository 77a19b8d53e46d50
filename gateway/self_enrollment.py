"""Self-enrollment with a liveness proof, for the Gate: challenges, the proof, the grant rule.

The flow: a principal asks for a challenge (random head poses, a nonce, at most two minutes to
answer); the person being enrolled answers with one frame per pose alongside their reference
photos; the proof holds when the challenge is open (this principal's, right nonce, not expired,
never answered), each frame shows one face in the pose asked for (:class:`PoseCheck`, plus any
stronger check the policy names), all frames are one person, and they match the reference
photos. The identity is then enrolled as ``self_attested_with_liveness`` in the same transaction
that spends the challenge. Every refused answer is a security event: audited
(``enrollment.liveness_refused``), answered 403 with its own code, and it spends the challenge
once the proof was examined, so each challenge gets one try.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from consentry.detectors.liveness import (
    LivenessCheck,
    LivenessFrame,
    Pose,
    PoseCheck,
    draw_poses,
    judge_reference,
    judge_same_person,
)
from consentry.gateway.requests import LivenessAnswer
from consentry.gateway.storage.audit_log import AuditLog, UnitOfWork
from consentry.gateway.storage.challenges import ChallengeRefused, Challenges, IssuedChallenge, OpenChallenge
from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.storage.subjects import IdentityAttestation, IdentityView, Subjects
from consentry.policies import codes
from consentry.policies.consent import Attestation
from consentry.policies.decision import Verdict
from consentry.policies.errors import BadInputError, ConsentryError, RefusedError, StageError
from consentry.policies.policy import Policy

if TYPE_CHECKING:
    from PIL import Image

    from consentry.detectors.analyzer import AnalyzedImage

DrawPoses = Callable[[int], Sequence[Pose]]
Enroll = Callable[[IdentityAttestation, UnitOfWork, dict[str, Any]], Awaitable[IdentityView]]


@dataclass(frozen=True, slots=True)
class LivenessProof:
    """A passed proof: the attestation to store and the record to audit with the enrollment."""

    challenge: OpenChallenge
    attestation: IdentityAttestation
    record: dict[str, Any]


class SelfEnrollment:
    def __init__(
        self,
        *,
        challenges: Challenges,
        subjects: Subjects,
        audit: AuditLog,
        policy: Policy,
        checks: Sequence[LivenessCheck],
        match_threshold: float,
        min_face_px: int,
        draw: DrawPoses = draw_poses,
    ) -> None:
        self.challenges, self.subjects, self.audit = challenges, subjects, audit
        self.policy, self.rules = policy, policy.enrollment
        self.checks = tuple(checks)
        self.match_threshold, self.min_face_px = match_threshold, min_face_px
        self.draw = draw

    async def issue(self, actor: PrincipalView) -> IssuedChallenge:
        poses = [Pose(p).value for p in self.draw(self.rules.pose_count)]
        return await self.challenges.issue(actor.id, poses, self.rules.challenge_ttl_s)

    async def open(self, actor: PrincipalView, answer: LivenessAnswer) -> OpenChallenge:
        """The challenge ``answer`` names, still open to ``actor``; else an audited refusal."""
        try:
            challenge = await self.challenges.open(answer.challenge_id, answer.nonce, actor.id)
        except ChallengeRefused as exc:
            await self._refuse(actor, answer.challenge_id, exc.code, exc.detail, spend=False)
        if len(answer.frames) != len(challenge.poses):
            raise BadInputError(
                f"challenge {challenge.id} asks for {len(challenge.poses)} frames "
                f"({', '.join(challenge.poses)}), one per pose in order; got {len(answer.frames)}",
                code=codes.LIVENESS_FRAME_COUNT,
            )
        return challenge

    async def prove(
        self,
        actor: PrincipalView,
        challenge: OpenChallenge,
        answer: LivenessAnswer,
        images: Sequence[Image.Image],
        analyzed: Sequence[AnalyzedImage],
        templates: np.ndarray,
    ) -> LivenessProof:
        """Check the answered frames; a failure is audited, spends the challenge and raises."""
        from consentry.detectors.enrollment import face_size

        frames, embeddings = [], []
        for number, (image, found, pose) in enumerate(zip(images, analyzed, challenge.poses, strict=True), 1):
            big = [i for i, face in enumerate(found.faces) if face_size(face.box) >= self.min_face_px]
            if len(big) != 1:
                what = "no face" if not big else f"{len(big)} faces"
                reason = (
                    f"frame {number} shows {what} of at least {self.min_face_px} px; exactly one is required"
                )
                await self._refuse(
                    actor, challenge.id, codes.LIVENESS_FACE_COUNT, reason, details={"frame": number}
                )
            frames.append(LivenessFrame(number, Pose(pose), image, found.faces[big[0]]))
            embeddings.append(found.embeddings[big[0]])
        results: dict[str, Verdict] = {}
        for check in self.checks:
            try:
                verdict = await asyncio.to_thread(check.check, frames)
            except Exception as exc:  # fail closed: a check that cannot decide refuses
                await self._refuse(
                    actor, challenge.id, codes.STAGE_ERROR, f"{check.name} failed: {exc}", fault=True
                )
            if not verdict.allowed:
                code = verdict.code if isinstance(check, PoseCheck) else codes.LIVENESS_MODEL_REFUSED
                await self._refuse(
                    actor, challenge.id, code, f"{check.name}: {verdict.reason}", details=verdict.scores
                )
            results[check.name] = verdict
        stacked = np.stack(embeddings)
        for name, verdict in (
            ("same_person", judge_same_person(stacked, self.match_threshold)),
            ("reference", judge_reference(stacked, templates, self.match_threshold)),
        ):
            if not verdict.allowed:
                await self._refuse(actor, challenge.id, verdict.code, verdict.reason, details=verdict.scores)
            results[name] = verdict
        record = {
            "challenge_id": challenge.id,
            "poses": list(challenge.poses),
            "frames_sha256": [hashlib.sha256(f).hexdigest() for f in answer.frames],
            "checks": {name: {k: round(v, 4) for k, v in r.scores.items()} for name, r in results.items()},
            "verified_at": self.challenges.clock().isoformat(),
        }
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        attestation = IdentityAttestation(Attestation.self_attested_with_liveness.value, challenge.id, digest)
        return LivenessProof(challenge, attestation, record)

    async def enroll(
        self, actor: PrincipalView, proof: LivenessProof, answer: LivenessAnswer, enroll: Enroll
    ) -> IdentityView:
        """Run ``enroll`` with the proof, spending the challenge in its transaction; a challenge
        spent (or expired) meanwhile rolls the enrollment back and is refused as such."""
        spend = self.challenges.spend_on_enrollment(proof.challenge.id, answer.nonce, actor.id)
        details = {"liveness": proof.record, "evidence_sha256": proof.attestation.evidence_sha256}
        try:
            return await enroll(proof.attestation, spend, details)
        except ChallengeRefused as exc:
            await self._refuse(actor, proof.challenge.id, exc.code, exc.detail, spend=False)

    async def grant_attestation(
        self, actor: PrincipalView, identity_id: str, purposes: Sequence[str]
    ) -> IdentityAttestation:
        """The identity's attestation, for the grant to record; refused (and audited) when a
        purpose needs a self-enrollment with a liveness proof and the identity has none."""
        attested = await self.subjects.attestation_of(identity_id)
        needed = [p.value for p in self.policy.liveness_required(purposes)]
        if needed and attested.kind != Attestation.self_attested_with_liveness:
            reason = (
                f"the policy reserves {', '.join(needed)} for subjects who enrolled themselves with a "
                f"liveness proof; identity {identity_id} is {attested.kind}"
            )
            body = {
                "identity_id": identity_id,
                "actor": actor.id,
                "purposes": list(purposes),
                "decision": codes.CONSENT_LIVENESS_REQUIRED,
                "reason": reason,
            }
            event = await self.audit.append("grant.refused", body)
            raise RefusedError(
                reason, code=codes.CONSENT_LIVENESS_REQUIRED, audit_seq=event.seq, purposes=needed
            )
        return attested

    async def _refuse(
        self,
        actor: PrincipalView,
        challenge_id: str,
        code: str,
        reason: str,
        *,
        spend: bool = True,
        fault: bool = False,
        details: dict[str, Any] | None = None,
    ) -> NoReturn:
        details = details or {}
        body = {
            "challenge_id": challenge_id,
            "actor": actor.id,
            "decision": code,
            "reason": reason,
            **details,
        }
        also = self.challenges.spend_on_refusal(challenge_id, code) if spend else None
        event = await self.audit.append("enrollment.liveness_refused", body, also=also)
        error: type[ConsentryError] = StageError if fault else RefusedError
        raise error(reason, code=code, audit_seq=event.seq, challenge_id=challenge_id, **details)
