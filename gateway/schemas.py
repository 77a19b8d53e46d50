"""Request bodies shared by HTTP and CLI. Unknown fields are refused; images travel as base64."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from consentry.policies.consent import Purpose
from consentry.policies.errors import BadInputError

B64Image = Annotated[str, Field(min_length=1, max_length=30_000_000, description="base64-encoded image file")]


def decode_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(f"{what} is not valid base64", code="input.base64_invalid") from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class EnrollRequest(Strict):
    label: str = Field(min_length=1, max_length=200, description="operator's label; never leaves the gateway")
    photos: list[B64Image] = Field(min_length=1, max_length=20)


class GrantRequest(Strict):
    identity_id: str = Field(min_length=1, max_length=40)
    principal: str = Field(min_length=1, max_length=200, description="grantee principal id or name")
    purposes: list[Purpose] = Field(min_length=1)
    deny_terms: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default=[], max_length=200)
    expires_at: datetime | None = None
    max_uses: int | None = Field(default=None, ge=1, le=1_000_000)
    attested_by: str = Field(min_length=1, max_length=200, description="who collected the consent")
    consent_text_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hash of the consent text shown")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a timezone")
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("expires_at is in the past")
        return value


class GenerateRequest(Strict):
    subject_id: str = Field(min_length=1, max_length=40)
    purpose: Purpose
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    steps: int | None = Field(default=None, ge=1, le=100)
    width: int | None = Field(default=None, ge=256, le=2048, multiple_of=8)
    height: int | None = Field(default=None, ge=256, le=2048, multiple_of=8)
    num_images: int = Field(default=1, ge=1, le=4)
    references: list[B64Image] = Field(default=[], max_length=8)


class PrincipalRequest(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: str = Field(pattern=r"^(admin|operator|requester|auditor)$")


class VerifyRequest(Strict):
    image: B64Image
