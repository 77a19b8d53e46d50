"""The Consentry HTTP API's wire schemas: request bodies (images as base64) and response models.

Each request schema turns itself into the core's typed request (:mod:`consentry.gateway.requests`,
image files as bytes) with ``to_request()``; that is the only place base64 is decoded. Unknown
fields are refused. Limits come from :mod:`consentry.policies.limits`, shared with the core.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from consentry.gateway import requests as core
from consentry.generation.base import GenerationMode
from consentry.policies import codes
from consentry.policies.consent import Attestation, Purpose
from consentry.policies.errors import BadInputError
from consentry.policies.limits import (
    MAX_ENROLL_PHOTOS,
    MAX_IMAGES,
    MAX_LABEL_CHARS,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    SIDE_MULTIPLE,
)
from consentry.policies.policy import MAX_POSES

B64Image = Annotated[str, Field(min_length=1, max_length=30_000_000, description="base64-encoded image file")]
Id = Annotated[str, Field(min_length=1, max_length=40)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


def decode_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what} is not valid base64", code=codes.INPUT_BASE64_INVALID) from exc


def _files(items: list[str], what: str) -> tuple[bytes, ...]:
    return tuple(decode_b64(item, f"{what} {i}") for i, item in enumerate(items, start=1))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- requests -----------------------------------------------------------------------------------


class EnrollBody(Strict):
    label: Name = Field(description="operator's label; never leaves the gateway")
    photos: list[B64Image] = Field(min_length=1, max_length=MAX_ENROLL_PHOTOS)
    keep_photos: bool = Field(
        default=False,
        description="keep the photos, encrypted under the identity's key, for adapter training",
    )
    # Self-enrollment: the answer to POST /v1/enrollments/challenges (all three, or none).
    challenge_id: Id | None = Field(default=None, description="self-enrollment: the challenge answered")
    nonce: str | None = Field(
        default=None, min_length=1, max_length=200, description="self-enrollment: the challenge's nonce"
    )
    frames: list[B64Image] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_POSES,
        description="self-enrollment: one unmirrored frame of the person per requested pose, in order",
    )

    @model_validator(mode="after")
    def _whole_answer(self) -> EnrollBody:
        given = [self.challenge_id is not None, self.nonce is not None, self.frames is not None]
        if any(given) and not all(given):
            raise ValueError("a self-enrollment answer needs challenge_id, nonce and frames together")
        return self

    def to_request(self) -> core.EnrollmentRequest:
        liveness = None
        if self.challenge_id is not None and self.nonce is not None and self.frames is not None:
            liveness = core.LivenessAnswer(
                challenge_id=self.challenge_id, nonce=self.nonce, frames=_files(self.frames, "frame")
            )
        return core.EnrollmentRequest(
            label=self.label,
            photos=_files(self.photos, "photo"),
            keep_photos=self.keep_photos,
            liveness=liveness,
        )


class GrantBody(Strict):
    identity_id: Id
    principal: Name = Field(description="grantee principal id or name")
    purposes: list[Purpose] = Field(min_length=1)
    deny_terms: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default=[], max_length=200)
    expires_at: datetime | None = None
    max_uses: int | None = Field(default=None, ge=1, le=1_000_000)
    attested_by: Name = Field(description="who collected the consent")
    consent_text_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of the consent text shown")
    use_enrollment_photos: bool = Field(
        default=False, description="with adapter_training: the adapter may learn from enrollment photos"
    )

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a timezone")
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("expires_at is in the past")
        return value

    def to_request(self) -> core.GrantRequest:
        return core.GrantRequest(
            identity_id=self.identity_id,
            principal=self.principal,
            purposes=tuple(self.purposes),
            attested_by=self.attested_by,
            consent_text_sha256=self.consent_text_sha256,
            deny_terms=tuple(self.deny_terms),
            expires_at=self.expires_at,
            max_uses=self.max_uses,
            use_enrollment_photos=self.use_enrollment_photos,
        )


Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)]


class GenerateBody(Strict):
    subject_id: Id | None = Field(
        default=None, description="the consenting subject; omit for traffic that names nobody"
    )
    purpose: Purpose | None = Field(
        default=None, description="required with subject_id: the grant must cover it"
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    width: Side | None = None
    height: Side | None = None
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    references: list[B64Image] = Field(default=[], max_length=MAX_REFERENCES)
    mode: GenerationMode = Field(
        default=GenerationMode.txt2img,
        description="img2img starts from the first reference; ip_adapter conditions on the references",
    )
    # The range (0, 1] is checked by the generation job, with its own stable code.
    strength: float = Field(default=0.6, description="img2img: how far the reference is re-drawn, in (0, 1]")
    adapter: bool = Field(default=False, description="use the subject's trained LoRA adapter")

    def to_request(self) -> core.GenerationRequest:
        return core.GenerationRequest(
            subject_id=self.subject_id,
            purpose=self.purpose,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
            steps=self.steps,
            width=self.width,
            height=self.height,
            num_images=self.num_images,
            references=_files(self.references, "reference"),
            mode=self.mode,
            strength=self.strength,
            adapter=self.adapter,
        )


class AdapterBody(Strict):
    photos: list[B64Image] = Field(
        default=[],
        max_length=MAX_ENROLL_PHOTOS,
        description="training photos of the subject; none: the enrollment photos, if the grant allows",
    )
    # Ranges are checked by the training configuration, with the code adapter.invalid_params.
    steps: int | None = None
    rank: int | None = None
    prior_images: int | None = None

    def to_request(self, identity_id: str) -> core.AdapterTrainingRequest:
        return core.AdapterTrainingRequest(
            identity_id=identity_id,
            photos=_files(self.photos, "photo"),
            steps=self.steps,
            rank=self.rank,
            prior_images=self.prior_images,
        )


class PrincipalBody(Strict):
    name: Name
    role: str = Field(pattern=r"^(admin|operator|requester|auditor)$")


class VerifyBody(Strict):
    image: B64Image

    def to_bytes(self) -> bytes:
        return decode_b64(self.image, "image")


# -- responses ----------------------------------------------------------------------------------


class LiveOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str = Field(description="ok when ready; unavailable (HTTP 503) otherwise")
    database: bool
    models_loaded: bool
    audit_head_valid: bool = Field(description="the signed head names the last event and verifies")
    audit_events: int
    problems: list[str]
    embedder: str | None
    generator: str
    untrained_model: bool | None


class IssuedKeyOut(BaseModel):
    id: str = Field(description="the principal id (create) or the key id (issue)")
    api_key: str = Field(description="the secret; shown once, never stored")
    name: str | None = None
    role: str | None = None
    principal_id: str | None = None


class RevokedOut(BaseModel):
    id: str
    revoked: bool


class DeletedOut(BaseModel):
    id: str
    deleted: bool


class IdentityOut(BaseModel):
    id: str
    label: str
    status: str
    attestation: Attestation = Field(
        default=Attestation.operator_attested, description="how the person was attested"
    )


class ChallengeOut(BaseModel):
    challenge_id: str
    nonce: str = Field(description="send it back with the answer; shown once, stored only as a hash")
    expires_at: datetime = Field(description="answer before this time (at most two minutes)")
    poses: list[str] = Field(description="left, front or right (the subject's own), one frame each, in order")


class ErasedOut(BaseModel):
    id: str
    erased: bool
    templates_destroyed: int
    grants_revoked: int
    records_flagged: int = Field(description="past generation records flagged as showing an erased subject")
    adapters_deleted: int = Field(default=0, description="LoRA adapters deleted (their key is destroyed too)")
    photos_deleted: int = Field(default=0, description="kept enrollment photos deleted")


class GrantOut(BaseModel):
    id: str
    identity_id: str
    principal_id: str
    purposes: list[str]
    expires_at: datetime | None
    max_uses: int | None
    attestation: Attestation = Field(
        default=Attestation.operator_attested,
        description="how the subject was attested when the grant was recorded",
    )


class VerdictOut(BaseModel):
    allowed: bool
    code: str
    reason: str
    scores: dict[str, float]
    elapsed_ms: float
    fault: bool


class AdapterOut(BaseModel):
    id: str
    identity_id: str
    grant_id: str = Field(description="the adapter_training grant it was trained under")
    principal_id: str
    status: str = Field(description="training, ready or failed")
    steps: int
    steps_done: int = Field(description="progress of the training job")
    rank: int
    prior_images: int
    loss: float | None
    photos_source: str = Field(description="enrollment or request")
    photos: int
    error_code: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class AdapterListOut(BaseModel):
    adapters: list[AdapterOut]


class GenerateOut(BaseModel):
    record_id: str
    watermark: str = Field(description="hex payload of the invisible watermark; it names the record")
    model: str
    untrained: bool
    mode: str = Field(description="txt2img, img2img or ip_adapter")
    adapter_id: str | None = Field(description="the subject's LoRA adapter used, if any")
    audit_seq: int
    stages: dict[str, VerdictOut] = Field(description="every stage's verdict, in flow order")
    images: list[str] = Field(description="base64 PNG files, each with a signed C2PA manifest")
    media_type: str


class AuditReportOut(BaseModel):
    ok: bool
    events: int
    head: str
    first_bad_seq: int | None = None
    problem: str = ""


class ProvenanceOut(BaseModel):
    c2pa: dict[str, Any]
    watermark: dict[str, Any]
    record: dict[str, Any] | None
    provenance_found: bool
    assessment: dict[str, Any]
