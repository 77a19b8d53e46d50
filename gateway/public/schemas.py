"""Wire shapes of public verification. The Soft Binding Resolution API's models keep the C2PA
specification's camelCase names (``matches``, ``manifestId``, ``similarityScore``, ``alg``);
``status`` on a match and the tombstone are Consentry's extensions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from consentry.provenance.resolution import ALGORITHM, Match, PublicCheck

Status = Literal["available", "revoked", "erased"]


class BindingQueryBody(BaseModel):
    """The spec's ``c2pa.softBindingQuery`` (the POST form of byBinding)."""

    model_config = ConfigDict(extra="forbid")
    alg: str = Field(min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=200, description="base64 of the payload (or 16 hex digits)")


class AlgOut(BaseModel):
    alg: str


class SupportedAlgorithmsOut(BaseModel):
    """The spec's ``c2pa.softBindingAlgList``."""

    watermarks: list[AlgOut]
    fingerprints: list[AlgOut]


class MatchOut(BaseModel):
    manifestId: str
    similarityScore: int | None = Field(
        default=None, ge=0, le=100, description="how cleanly the mark decoded (byContent only)"
    )
    status: Status = Field(
        description="Consentry's: available, or revoked / erased (the manifest is then 410 + tombstone)"
    )


class MatchesOut(BaseModel):
    """The spec's ``c2pa.softBindingQueryResult``."""

    matches: list[MatchOut]


class TombstoneOut(BaseModel):
    manifestId: str | None
    recordId: str
    status: Status
    releasedAt: datetime
    releasedUnderConsent: bool
    consentWithdrawn: bool
    deployment: str
    statement: str


class TombstoneProblemOut(BaseModel):
    """The 410 answer of a withheld manifest: problem+json carrying the tombstone."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    tombstone: TombstoneOut


class PublicC2paOut(BaseModel):
    state: str | None = Field(description="Trusted, Valid, Invalid, or null (no manifest in the file)")
    record_id: str | None = Field(description="the record the file's own manifest names")
    claimed_watermark: str | None = Field(description="the payload the file's own manifest binds")
    validation_errors: list[str] = Field(description="C2PA failure codes")


class PublicWatermarkOut(BaseModel):
    alg: str
    found: bool
    payload: str | None
    confidence: float


class PublicRecordOut(BaseModel):
    id: str
    released_at: datetime
    subject_named: bool = Field(description="released under a subject's consent")
    status: Status


class AssessmentOut(BaseModel):
    basis: str
    proves: list[str]
    does_not_prove: list[str]
    conflicts: list[str]


class PublicVerifyOut(BaseModel):
    deployment: str
    c2pa: PublicC2paOut
    watermark: PublicWatermarkOut
    record: PublicRecordOut | None
    matches: list[MatchOut]
    tombstone: TombstoneOut | None
    assessment: AssessmentOut


def matches_body(matches: tuple[Match, ...]) -> dict[str, Any]:
    """The spec's result, ``similarityScore`` left out where there is none (not null)."""
    return {
        "matches": [
            {"manifestId": m.manifest_id, "status": m.status}
            | ({"similarityScore": m.similarity} if m.similarity is not None else {})
            for m in matches
        ]
    }


def verify_out(check: PublicCheck, deployment: str) -> PublicVerifyOut:
    blocks = (check.c2pa.get("soft_binding") or {}).get("blocks") or []
    facts = check.record
    return PublicVerifyOut(
        deployment=deployment,
        c2pa=PublicC2paOut(
            state=check.c2pa["state"],
            record_id=(check.c2pa.get("generation") or {}).get("record_id"),
            claimed_watermark=blocks[0].get("value") if blocks else None,
            validation_errors=check.c2pa["validation_errors"],
        ),
        watermark=PublicWatermarkOut(
            alg=ALGORITHM,
            found=check.watermark.found,
            payload=check.watermark.payload,
            confidence=check.watermark.confidence,
        ),
        record=PublicRecordOut(
            id=facts.record_id,
            released_at=facts.released_at,
            subject_named=facts.subject_named,
            status=facts.status,
        )
        if facts is not None
        else None,
        matches=[MatchOut(**m) for m in matches_body(check.matches)["matches"]],
        tombstone=TombstoneOut(**check.tombstone.as_dict()) if check.tombstone is not None else None,
        assessment=AssessmentOut(**check.assessment.as_dict()),
    )
