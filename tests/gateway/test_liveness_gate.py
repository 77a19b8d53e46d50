"""Self-enrollment with a liveness proof through the Gate, on SQLite and PostgreSQL, with real
photos and the real face models: a passing answer, and each refusal with its own code, audited.

Hugo Chavez's LFW photos give a real pose set (measured yaw: 0003 +39.6° = turned to his left,
0010 -4.0° = front, 0006 -24.4° = turned to his right) and four reference photos (0001, 0002,
0004, 0005). The clock and the pose sequence are injected (``build_self_enrollment``), so expiry
is tested without waiting and each test knows which poses it must show.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from consentry.detectors.analyzer import AnalyzedImage, FaceAnalyzer
from consentry.detectors.embedders import Embedder
from consentry.detectors.liveness import LivenessCheck, LivenessFrame, Pose
from consentry.gateway.gate import Gate
from consentry.gateway.requests import EnrollmentRequest, GrantRequest, LivenessAnswer
from consentry.gateway.storage.challenges import IssuedChallenge
from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.testing import ManualClock
from consentry.gateway.wiring import build_liveness_checks, build_self_enrollment, open_gate
from consentry.generation.base import Generator
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.decision import Verdict
from consentry.policies.errors import BadInputError, ConsentryError, ForbiddenError, RefusedError, StageError
from consentry.policies.policy import Policy, load_policy

pytestmark = pytest.mark.slow

LEFT, FRONT, RIGHT = ("Hugo_Chavez", 3), ("Hugo_Chavez", 10), ("Hugo_Chavez", 6)
REFERENCES = [("Hugo_Chavez", n) for n in (1, 2, 4, 5)]
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = """
version = "liveness-test"
[enrollment]
require_liveness_for = ["adapter_training"]
liveness_model = "tests.gateway.test_liveness_gate:ColourCheck"
"""


class ColourCheck:
    """A deployment's own check, named by import path in the policy above: a stand-in for a
    passive anti-spoofing model that refuses frames without colour (a print or screen replay)."""

    name = "colour"

    def __init__(self, weights: Path | None) -> None:
        self.weights = weights

    def check(self, frames: Sequence[LivenessFrame]) -> Verdict:
        for frame in frames:
            rgb = np.asarray(frame.image.convert("RGB"), dtype=np.int16)
            chroma = float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean())
            if chroma < 1.0:
                return Verdict.refuse(codes.LIVENESS_MODEL_REFUSED, f"frame {frame.number} has no colour")
        return Verdict.allow("every frame has colour")


class ExplodingCheck:
    name = "exploding"

    def check(self, frames: Sequence[LivenessFrame]) -> Verdict:
        raise RuntimeError("the model's runtime crashed")


class CachedAnalyzer:
    """The real analyzer, remembering each photo's result: the same LFW photos recur in many
    tests, and their analysis is the slow part (the results are the model's own)."""

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.inner = analyzer
        self.seen: dict[str, AnalyzedImage] = {}

    @property
    def embedder(self) -> Embedder:
        return self.inner.embedder

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        keys = [
            hashlib.sha256(im.convert("RGB").tobytes() + str(im.size).encode()).hexdigest() for im in images
        ]
        missing = {k: im for k, im in zip(keys, images, strict=True) if k not in self.seen}
        for key, result in zip(missing, self.inner.analyze(list(missing.values())), strict=True):
            self.seen[key] = result
        return [self.seen[k] for k in keys]


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class World:
    gate: Gate
    clock: ManualClock
    op: PrincipalView
    op2: PrincipalView
    studio: PrincipalView
    faces: Path
    settings: Settings
    policy: Policy
    poses: list[Pose] = dataclasses.field(default_factory=list)

    def rebuilt(self, checks: Sequence[LivenessCheck]) -> Gate:
        """The gate with these liveness checks, this clock, and ``self.poses`` as the draw."""
        parts = self.gate.parts
        self_enrollment = build_self_enrollment(
            self.settings,
            self.policy,
            list(checks),
            db=parts.db,
            audit=parts.audit,
            subjects=parts.subjects,
            clock=self.clock,
            draw=lambda n: self.poses,
        )
        return Gate(dataclasses.replace(parts, self_enrollment=self_enrollment))

    def photo(self, person: str, n: int) -> bytes:
        return (self.faces / "lfw" / person / f"{person}_{n:04d}.jpg").read_bytes()

    async def challenge(self, *poses: Pose, actor: PrincipalView | None = None) -> IssuedChallenge:
        self.poses = list(poses)
        return await self.gate.enrollment_challenge(actor or self.op)

    def answer(
        self,
        issued: IssuedChallenge,
        frames: Sequence[tuple[str, int] | bytes],
        references: Sequence[tuple[str, int]] = REFERENCES,
        nonce: str | None = None,
    ) -> EnrollmentRequest:
        files = tuple(f if isinstance(f, bytes) else self.photo(*f) for f in frames)
        return EnrollmentRequest(
            label="self-enrolled",
            photos=tuple(self.photo(*r) for r in references),
            liveness=LivenessAnswer(challenge_id=issued.id, nonce=nonce or issued.nonce, frames=files),
        )

    async def events(self, kind: str) -> list[dict[str, Any]]:
        return [e.body async for e in self.gate.audit.events() if e.kind == kind]

    async def refused(
        self, code: str, req: EnrollmentRequest, actor: PrincipalView | None = None
    ) -> dict[str, Any]:
        """Enroll, expect refusal ``code``; return its audit event (the last refusal)."""
        before = len(await self.events("identity.enrolled"))
        with pytest.raises(ConsentryError) as err:
            await self.gate.enroll(actor or self.op, req)
        assert err.value.code == code, err.value.detail
        assert len(await self.events("identity.enrolled")) == before  # nothing enrolled
        event = (await self.events("enrollment.liveness_refused"))[-1]
        assert req.liveness is not None and event["challenge_id"] == req.liveness.challenge_id
        assert event["decision"] == code and err.value.extra["audit_seq"] >= 1
        return event


@pytest.fixture(scope="module")
def cached(shared_models: tuple[FaceAnalyzer, Generator]) -> CachedAnalyzer:
    return CachedAnalyzer(shared_models[0])


@pytest.fixture
async def world(
    database_url: str,
    tmp_path: Path,
    tiny_model: Path,
    dev_keys: Path,
    shared_models: tuple[FaceAnalyzer, Generator],
    cached: CachedAnalyzer,
    faces_dir: Path,
) -> AsyncIterator[World]:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        model_dir=tiny_model,
        keys_dir=dev_keys,
        device="cpu",
        policy_file=policy_file,
    )
    gate = await open_gate(settings, analyzer=cached, generator=shared_models[1])
    people = [("op", "operator"), ("op2", "operator"), ("studio", "requester")]
    op, op2, studio = [(await gate.principals.create(n, r)).principal for n, r in people]
    policy = load_policy(policy_file)
    world = World(gate, ManualClock(T0), op, op2, studio, faces_dir, settings, policy)
    world.gate = world.rebuilt(build_liveness_checks(policy))
    yield world
    await gate.close()


def grant(world: World, identity_id: str, purpose: Purpose) -> GrantRequest:
    return GrantRequest(
        identity_id=identity_id,
        principal="studio",
        purposes=(purpose,),
        attested_by="kiosk",
        consent_text_sha256="0" * 64,
    )


async def test_a_person_who_shows_the_poses_enrolls_themself_once(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    assert issued.poses == ("left", "front", "right") and issued.expires_at == T0 + timedelta(seconds=120)
    req = world.answer(issued, [LEFT, FRONT, RIGHT])
    identity = await world.gate.enroll(world.op, req)
    attested = await world.gate.subjects.attestation_of(identity.id)
    assert (attested.kind, attested.challenge_id) == ("self_attested_with_liveness", issued.id)
    # The audit event holds the proof's record; the identity row holds its hash.
    [event] = await world.events("identity.enrolled")
    record = event["liveness"]
    assert hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest() == attested.evidence_sha256
    assert event["attestation"] == "self_attested_with_liveness" and event["photos"] == 4
    assert record["frames_sha256"] == [hashlib.sha256(f).hexdigest() for f in req.liveness.frames]  # type: ignore[union-attr]
    yaws = record["checks"]["landmark-yaw-v1"]
    assert yaws["yaw_deg_1"] >= 20 and abs(yaws["yaw_deg_2"]) <= 10 and yaws["yaw_deg_3"] <= -20
    assert set(record["checks"]) == {"landmark-yaw-v1", "colour", "same_person", "reference"}
    assert record["checks"]["reference"]["min_similarity"] >= 0.93
    # The same answer again is a replay, refused and audited; nothing else is enrolled.
    event = await world.refused(codes.LIVENESS_REPLAYED, req)
    assert event["actor"] == world.op.id
    # The policy reserves adapter_training for self-enrolled subjects: this one may grant it.
    terms = await world.gate.grant(world.op, grant(world, identity.id, Purpose.adapter_training))
    assert terms.attestation == "self_attested_with_liveness"
    [created] = await world.events("grant.created")
    assert created["attestation"] == "self_attested_with_liveness"


async def test_an_operator_enrolled_identity_cannot_get_a_purpose_reserved_for_liveness(world: World) -> None:
    photos = tuple(world.photo("Arnold_Schwarzenegger", n) for n in (3, 4, 6, 10))
    identity = await world.gate.enroll(world.op, EnrollmentRequest(label="Arnold", photos=photos))
    with pytest.raises(RefusedError) as err:
        await world.gate.grant(world.op, grant(world, identity.id, Purpose.adapter_training))
    assert err.value.code == codes.CONSENT_LIVENESS_REQUIRED and err.value.extra["purposes"] == [
        "adapter_training"
    ]
    [refusal] = await world.events("grant.refused")
    assert refusal["decision"] == codes.CONSENT_LIVENESS_REQUIRED and refusal["identity_id"] == identity.id
    assert await world.events("grant.created") == []
    # Purposes the policy does not reserve still take an operator's attestation.
    terms = await world.gate.grant(world.op, grant(world, identity.id, Purpose.portrait))
    assert terms.attestation == "operator_attested"


async def test_frontal_photos_cannot_answer_a_turn_and_the_try_spends_the_challenge(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    frontal = [("Hugo_Chavez", 10), ("Hugo_Chavez", 7), ("Hugo_Chavez", 5)]  # yaw -4.0, -7.0, -8.1
    event = await world.refused(codes.LIVENESS_POSE_MISMATCH, world.answer(issued, frontal))
    assert event["frame"] == 1 and abs(event["yaw_deg"]) <= 10 and "asked left" in event["reason"]
    # One try per challenge: the right frames now come too late.
    await world.refused(codes.LIVENESS_REPLAYED, world.answer(issued, [LEFT, FRONT, RIGHT]))
    # A turn the wrong way is refused too.
    issued = await world.challenge(Pose.right, Pose.front, Pose.left)
    event = await world.refused(codes.LIVENESS_POSE_MISMATCH, world.answer(issued, [LEFT, FRONT, RIGHT]))
    assert event["frame"] == 1 and event["yaw_deg"] >= 20


async def test_a_person_swapped_mid_sequence_is_refused(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    # George W. Bush facing the camera (yaw +0.5) between Chavez's turns: every pose fits.
    event = await world.refused(
        codes.LIVENESS_PERSON_CHANGED, world.answer(issued, [LEFT, ("George_W_Bush", 2), RIGHT])
    )
    assert event["frame"] == 2 and event["similarity"] < 0.93


async def test_frames_of_someone_else_than_the_reference_photos_are_refused(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    arnold = [("Arnold_Schwarzenegger", n) for n in (3, 4, 6, 10)]
    event = await world.refused(
        codes.LIVENESS_REFERENCE_MISMATCH, world.answer(issued, [LEFT, FRONT, RIGHT], references=arnold)
    )
    assert event["similarity"] < 0.93


async def test_expired_unknown_and_foreign_challenges_are_refused(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    frames = [LEFT, FRONT, RIGHT]
    unknown = codes.LIVENESS_UNKNOWN_CHALLENGE
    await world.refused(unknown, world.answer(issued, frames, nonce="not-the-nonce"))
    await world.refused(unknown, world.answer(issued, frames), actor=world.op2)  # another principal's
    forged = IssuedChallenge("chl_0123456789abcdef", issued.nonce, issued.poses, issued.expires_at)
    await world.refused(unknown, world.answer(forged, frames))
    # Two frames for three poses is bad input: 400, nothing audited, the challenge stays open.
    refusals = len(await world.events("enrollment.liveness_refused"))
    with pytest.raises(BadInputError) as err:
        await world.gate.enroll(world.op, world.answer(issued, frames[:2]))
    assert err.value.code == codes.LIVENESS_FRAME_COUNT
    assert len(await world.events("enrollment.liveness_refused")) == refusals
    world.clock.now = T0 + timedelta(seconds=121)
    event = await world.refused(codes.LIVENESS_EXPIRED, world.answer(issued, frames))
    assert "expired at" in event["reason"]
    with pytest.raises(ForbiddenError):
        await world.gate.enrollment_challenge(world.studio)  # a requester asks for none


async def test_a_frame_must_show_one_face(world: World, faces_dir: Path) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    landscape = (faces_dir / "groups" / "017_0.jpg").read_bytes()
    event = await world.refused(codes.LIVENESS_FACE_COUNT, world.answer(issued, [LEFT, landscape, RIGHT]))
    assert event["frame"] == 2


async def test_the_deployments_liveness_model_refuses_and_a_crashing_one_fails_closed(world: World) -> None:
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    grey = [
        png(Image.open(io.BytesIO(world.photo(*f))).convert("L").convert("RGB")) for f in (LEFT, FRONT, RIGHT)
    ]
    event = await world.refused(codes.LIVENESS_MODEL_REFUSED, world.answer(issued, grey))
    assert "colour: frame 1 has no colour" in event["reason"]
    # A check that raises refuses (503, audited) and spends the challenge.
    world.gate = world.rebuilt([*build_liveness_checks(world.policy), ExplodingCheck()])
    issued = await world.challenge(Pose.left, Pose.front, Pose.right)
    with pytest.raises(StageError) as err:
        await world.gate.enroll(world.op, world.answer(issued, [LEFT, FRONT, RIGHT]))
    assert err.value.code == codes.STAGE_ERROR and "the model's runtime crashed" in err.value.detail
    [*_, event] = await world.events("enrollment.liveness_refused")
    assert event["decision"] == codes.STAGE_ERROR and event["challenge_id"] == issued.id
