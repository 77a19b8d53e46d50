"""Public soft-binding resolution: from a watermark to a released image's manifest, or a tombstone.

This is the logic behind the C2PA Soft Binding Resolution API the gateway serves without a key
(:mod:`consentry.gateway.public_api`): a watermark payload (given as a binding value, or decoded
from an uploaded file) names a generation record; each image released under that record has a
manifest id (``<record id>_<n>``, the released file's name), and the manifest is the store
signed into that file.

The one rule here: **a manifest of a record whose subject has since withdrawn consent (revoked
the grant) or been erased is withheld** and answered with a :class:`Tombstone`: that the record
existed, when it was released, that it was released under consent since withdrawn, and which
deployment says so; nothing that names or describes the person (no consent hash, no identity,
no reference-photo hashes, no adapter). A record made without a subject is never withheld.
Expired or used-up grants are not withdrawals: the image was released while consent held.

The resolver knows no HTTP and no database: records come through :class:`ReleaseLookup`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConsentryError, NotFoundError
from consentry.provenance.manifest_store import png_manifest_store
from consentry.provenance.report import Assessment, WatermarkFinding, assess
from consentry.provenance.verification import read_c2pa
from consentry.provenance.watermark import ALGORITHM, PAYLOAD_BYTES, Watermarker

__all__ = [
    "ALGORITHM",
    "ManifestWithdrawnError",
    "Match",
    "PublicCheck",
    "ReleaseFacts",
    "ReleaseLookup",
    "SoftBindingResolver",
    "Tombstone",
    "binding_payload",
    "check_alg",
    "parse_manifest_id",
]

log = logging.getLogger("consentry.public")

Status = Literal["available", "revoked", "erased"]
_MANIFEST_ID = re.compile(r"([a-z]{3}_[0-9a-f]{16})_([0-9]{1,3})")
_HEX_PAYLOAD = re.compile(f"[0-9a-fA-F]{{{2 * PAYLOAD_BYTES}}}")
MAX_RESULTS = 100


@dataclass(frozen=True, slots=True)
class ReleaseFacts:
    """What resolution may know of a generation record: never who asked, nor for whom."""

    record_id: str
    released_at: datetime
    outputs: tuple[str, ...]
    """Paths of the released files, in order (file n carries manifest ``<record_id>_<n>``)."""
    subject_named: bool
    consent_withdrawn: bool
    """The grant the record was released under has since been revoked."""
    subject_erased: bool

    @property
    def status(self) -> Status:
        if not self.subject_named:
            return "available"  # nobody's consent was involved, so none can be withdrawn
        if self.subject_erased:
            return "erased"
        return "revoked" if self.consent_withdrawn else "available"

    def manifest_ids(self) -> list[str]:
        return [f"{self.record_id}_{n}" for n in range(len(self.outputs))]


class ReleaseLookup(Protocol):
    """Finds release facts by watermark payload (16 hex digits) or by record id."""

    async def release_by_watermark(self, watermark_hex: str) -> ReleaseFacts | None: ...

    async def release(self, record_id: str) -> ReleaseFacts | None: ...


@dataclass(frozen=True, slots=True)
class Match:
    """One entry of the spec's ``matches``; ``status`` is Consentry's extension."""

    manifest_id: str
    status: Status
    similarity: int | None = None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """All that is said of a withheld manifest."""

    manifest_id: str | None
    record_id: str
    status: Status
    released_at: datetime
    deployment: str

    def as_dict(self) -> dict[str, Any]:
        why = (
            "its subject has since been erased: consent withdrawn and their data destroyed"
            if self.status == "erased"
            else "its subject has since withdrawn the consent it was released under"
        )
        return {
            "manifestId": self.manifest_id,
            "recordId": self.record_id,
            "status": self.status,
            "releasedAt": self.released_at.isoformat(),
            "releasedUnderConsent": True,
            "consentWithdrawn": True,
            "deployment": self.deployment,
            "statement": f"This image was released by {self.deployment} under consent; {why}. "
            "Its manifest is withheld.",
        }


class ManifestWithdrawnError(ConsentryError):
    """The manifest is withheld because consent was withdrawn (410 Gone, with the tombstone)."""

    code: ClassVar[str] = codes.PUBLIC_CONSENT_REVOKED
    status = 410

    def __init__(self, tombstone: Tombstone) -> None:
        code = codes.PUBLIC_SUBJECT_ERASED if tombstone.status == "erased" else codes.PUBLIC_CONSENT_REVOKED
        super().__init__(tombstone.as_dict()["statement"], code=code, tombstone=tombstone.as_dict())
        self.tombstone = tombstone


@dataclass(frozen=True, slots=True)
class PublicCheck:
    """What the public check of a file found; nothing in it names or describes a person."""

    c2pa: dict[str, Any]
    watermark: WatermarkFinding
    matches: tuple[Match, ...]
    record: ReleaseFacts | None
    tombstone: Tombstone | None
    assessment: Assessment


def check_alg(alg: str) -> None:
    if alg != ALGORITHM:
        raise BadInputError(
            f"unsupported soft-binding algorithm {alg!r}; this service resolves {ALGORITHM!r}",
            code=codes.PUBLIC_ALG_UNSUPPORTED,
        )


def binding_payload(alg: str, value: str) -> bytes:
    """The payload a binding value names. The spec sends values base64-encoded; our manifests'
    soft-binding assertion writes the payload as 16 hex digits, so both forms are taken (they
    cannot be confused: base64 of 8 bytes is 11 or 12 characters)."""
    check_alg(alg)
    text = value.strip()
    if _HEX_PAYLOAD.fullmatch(text):
        return bytes.fromhex(text)
    try:
        payload = base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError) as exc:
        raise BadInputError(
            "value must be the payload in base64 (or as the manifest writes it, 16 hex digits)",
            code=codes.PUBLIC_BINDING_VALUE_INVALID,
        ) from exc
    if len(payload) != PAYLOAD_BYTES:
        raise BadInputError(
            f"value must encode {PAYLOAD_BYTES} bytes; it encodes {len(payload)}",
            code=codes.PUBLIC_BINDING_VALUE_INVALID,
        )
    return payload


def parse_manifest_id(manifest_id: str) -> tuple[str, int]:
    found = _MANIFEST_ID.fullmatch(manifest_id)
    if found is None:
        raise BadInputError(
            f"{manifest_id!r} is not a manifest id of this service (<record id>_<n>)",
            code=codes.PUBLIC_MANIFEST_ID_INVALID,
        )
    return found[1], int(found[2])


def _public_c2pa(report: Mapping[str, Any]) -> dict[str, Any]:
    """Of the file's own C2PA report, only what names no one: validity, the record and watermark
    it claims, and failure codes (c2pa's explanations may quote assertion contents)."""
    binding = report.get("soft_binding") or {}
    blocks = [b for b in binding.get("blocks") or [] if isinstance(b, dict)]
    record_id = (report.get("generation") or {}).get("record_id")
    return {
        "state": report.get("state"),
        "generation": {"record_id": record_id} if record_id else None,
        "soft_binding": {"alg": binding.get("alg"), "blocks": [{"value": b.get("value")} for b in blocks]}
        if binding
        else None,
        "validation_errors": [str(e).split(":", 1)[0] for e in report.get("validation_errors") or []],
    }


class SoftBindingResolver:
    def __init__(
        self,
        watermarker: Watermarker,
        records: ReleaseLookup,
        trust_anchors_pem: str | None,
        deployment: str,
    ) -> None:
        self.watermarker = watermarker
        self.records = records
        self.trust_anchors_pem = trust_anchors_pem
        self.deployment = deployment

    @staticmethod
    def supported_algorithms() -> dict[str, list[dict[str, str]]]:
        return {"watermarks": [{"alg": ALGORITHM}], "fingerprints": []}

    @staticmethod
    def _matches(facts: ReleaseFacts | None, max_results: int, similarity: int | None) -> tuple[Match, ...]:
        if facts is None:
            return ()
        ids = facts.manifest_ids()[: min(max_results, MAX_RESULTS)]
        return tuple(Match(i, facts.status, similarity) for i in ids)

    async def by_binding(self, alg: str, value: str, max_results: int) -> tuple[Match, ...]:
        payload = binding_payload(alg, value)
        return self._matches(await self.records.release_by_watermark(payload.hex()), max_results, None)

    async def _decode(self, image: Image.Image) -> tuple[WatermarkFinding, ReleaseFacts | None]:
        reading = await asyncio.to_thread(self.watermarker.decode, image)
        finding = WatermarkFinding(
            found=reading.found,
            payload=reading.payload.hex() if reading.payload is not None else None,
            confidence=float(reading.confidence),
            key_id=reading.key_id,
        )
        facts = None
        if finding.found and finding.payload is not None:
            facts = await self.records.release_by_watermark(finding.payload)
        return finding, facts

    @staticmethod
    def _similarity(finding: WatermarkFinding) -> int:
        # The decode passed its CRC, so the payload is exact; the score is how cleanly it read.
        return max(0, min(100, round(finding.confidence * 100)))

    async def by_content(self, image: Image.Image, max_results: int) -> tuple[Match, ...]:
        """Matches for the watermark decoded from ``image`` (check a requested ``alg`` first,
        with :func:`check_alg`, before decoding anything)."""
        finding, facts = await self._decode(image)
        return self._matches(facts, max_results, self._similarity(finding) if facts else None)

    def tombstone(self, facts: ReleaseFacts, manifest_id: str | None) -> Tombstone | None:
        if facts.status == "available":
            return None
        return Tombstone(manifest_id, facts.record_id, facts.status, facts.released_at, self.deployment)

    async def manifest_store(self, manifest_id: str) -> bytes:
        """The C2PA manifest store (JUMBF, ``application/c2pa``) signed into the released file,
        or :class:`ManifestWithdrawnError` with the tombstone."""
        record_id, n = parse_manifest_id(manifest_id)
        facts = await self.records.release(record_id)
        if facts is None or n >= len(facts.outputs):
            raise NotFoundError(f"no manifest {manifest_id}", code=codes.PUBLIC_MANIFEST_NOT_FOUND)
        tombstone = self.tombstone(facts, manifest_id)
        if tombstone is not None:
            raise ManifestWithdrawnError(tombstone)
        path = Path(facts.outputs[n])
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.warning("released file %s of %s is unreadable: %s", path, manifest_id, exc)
            raise NotFoundError(
                f"the released file of {manifest_id} is no longer kept here",
                code=codes.PUBLIC_MANIFEST_MISSING,
            ) from exc
        store = png_manifest_store(data)
        if store is None:
            log.warning("released file %s of %s carries no manifest store", path, manifest_id)
            raise NotFoundError(
                f"the released file of {manifest_id} carries no manifest store",
                code=codes.PUBLIC_MANIFEST_MISSING,
            )
        return store

    async def check(self, data: bytes, image: Image.Image, mime: str) -> PublicCheck:
        """The public check of a file: its own C2PA state, the watermark, the record it names,
        and the tombstone if that record's consent was withdrawn."""
        own, (finding, facts) = await asyncio.gather(
            asyncio.to_thread(read_c2pa, data, mime, self.trust_anchors_pem), self._decode(image)
        )
        c2pa = _public_c2pa(own)
        record = {"id": facts.record_id} if facts is not None else None
        assessment = assess(
            c2pa, finding, record, false_positive_bound=self.watermarker.false_positive_bound()
        )
        matches = self._matches(facts, MAX_RESULTS, self._similarity(finding) if facts else None)
        tombstone = self.tombstone(facts, None) if facts is not None else None
        return PublicCheck(c2pa, finding, matches, facts, tombstone, assessment)
