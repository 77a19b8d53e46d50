"""Provenance verification of an image: C2PA manifest, watermark, generation record.

Works on released files and on copies whose metadata was stripped: the watermark payload is
looked up in the generation records (a self-hosted soft-binding lookup). Only marks made with
this deployment's keys decode, so a real record's payload stamped onto another image with any
other key (another deployment's, or the old public default) names no record.

The verifier knows nothing of HTTP, databases or image decoding limits: the caller decodes the
image under its own limits, sniffs the media type, and passes in how records are looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError
from consentry.provenance.keys import load_signing_material
from consentry.provenance.manifest import read_manifest
from consentry.provenance.report import Assessment, ProvenanceReport, WatermarkFinding, assess
from consentry.provenance.watermark import Watermarker

__all__ = [
    "Assessment",
    "ProvenanceRecord",
    "ProvenanceReport",
    "ProvenanceVerifier",
    "RecordLookup",
    "WatermarkFinding",
    "load_trust_anchors",
    "read_c2pa",
]


class ProvenanceRecord(Protocol):
    """A generation record as a verifier shows it (the gateway's ``RecordView`` is one)."""

    def as_dict(self) -> dict[str, Any]: ...


class RecordLookup(Protocol):
    """Finds the generation record a watermark payload (16 hex digits) names, if any."""

    async def by_watermark(self, watermark_hex: str) -> ProvenanceRecord | None: ...


def load_trust_anchors(trust_anchors: Path | None, keys_dir: Path | None, trust_dev_ca: bool) -> str | None:
    """The configured anchors file plus, if enabled, the development CA (PEM), or None."""
    pems = []
    if trust_anchors is not None:
        try:
            pems.append(Path(trust_anchors).read_text())
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise ConfigurationError(
                f"cannot read trust_anchors {trust_anchors}: {why}", code=codes.CONFIG_TRUST_ANCHORS
            ) from exc
    if trust_dev_ca and keys_dir is not None:
        # Without dev keys, manifests still read; they are just not Trusted by the dev CA.
        with contextlib.suppress(ConfigurationError):
            pems.append(load_signing_material(keys_dir).trust_anchor_pem)
    return "\n".join(pems) or None


def read_c2pa(data: bytes, mime: str, anchors: str | None) -> dict[str, Any]:
    """The C2PA report; a format C2PA cannot carry simply has no manifest."""
    try:
        return read_manifest(data, mime, anchors).as_dict()
    except BadInputError as exc:
        if exc.code != codes.C2PA_UNSUPPORTED_FORMAT:
            raise
        return {"state": None, "note": f"{mime} cannot carry a C2PA manifest"}


class ProvenanceVerifier:
    """Reads an image's C2PA manifest and watermark and resolves the record the mark names."""

    def __init__(
        self, watermarker: Watermarker, records: RecordLookup, trust_anchors_pem: str | None
    ) -> None:
        self.watermarker = watermarker
        self.records = records
        self.trust_anchors_pem = trust_anchors_pem

    async def verify(self, data: bytes, image: Image.Image, mime: str) -> ProvenanceReport:
        """``data`` is the file as received (C2PA binds these bytes), ``image`` its decoded
        pixels (the watermark lives there), ``mime`` its sniffed media type. The blocking C2PA
        read and watermark decode run in worker threads, side by side."""
        c2pa_report, reading = await asyncio.gather(
            asyncio.to_thread(read_c2pa, data, mime, self.trust_anchors_pem),
            asyncio.to_thread(self.watermarker.decode, image),
        )
        record = None
        if reading.found and reading.payload is not None:
            found = await self.records.by_watermark(reading.payload.hex())
            record = found.as_dict() if found is not None else None
        watermark = WatermarkFinding(
            found=reading.found,
            payload=reading.payload.hex() if reading.payload is not None else None,
            confidence=float(reading.confidence),
            key_id=reading.key_id,
        )
        return ProvenanceReport(
            c2pa=c2pa_report,
            watermark=watermark,
            record=record,
            provenance_found=c2pa_report["state"] is not None or record is not None,
            assessment=assess(
                c2pa_report, watermark, record, false_positive_bound=self.watermarker.false_positive_bound()
            ),
        )
