"""Provenance verification of an uploaded image: C2PA manifest, watermark, generation record.

Works on released files and on copies whose metadata was stripped: the watermark payload is
looked up in the generation records (a self-hosted soft-binding lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from consentry.detectors.images import decode_image, sniff_mime
from consentry.gateway.storage.records import Records
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError, ConfigurationError
from consentry.provenance.keys import load_signing_material
from consentry.provenance.manifest import read_manifest
from consentry.provenance.watermark import Watermarker


def read_c2pa(data: bytes, mime: str, anchors: str | None) -> dict[str, Any]:
    """The C2PA report; a format C2PA cannot carry simply has no manifest."""
    try:
        return read_manifest(data, mime, anchors).as_dict()
    except BadInputError as exc:
        if exc.code != "c2pa.unsupported_format":
            raise
        return {"state": None, "note": f"{mime} cannot carry a C2PA manifest"}


class ProvenanceVerifier:
    def __init__(self, settings: Settings, records: Records, watermarker: Watermarker) -> None:
        self.settings = settings
        self.records = records
        self.watermarker = watermarker

    def trust_anchors(self) -> str | None:
        """The configured anchors file plus, if enabled, the development CA."""
        s = self.settings
        pems = []
        if s.trust_anchors is not None:
            try:
                pems.append(s.trust_anchors.read_text())
            except OSError as exc:
                detail = f"cannot read trust_anchors {s.trust_anchors}: {exc.strerror}"
                raise ConfigurationError(detail, code="config.trust_anchors") from exc
        if s.trust_dev_ca and s.keys_dir is not None:
            # Without dev keys, manifests still read; they are just not Trusted by the dev CA.
            with contextlib.suppress(ConfigurationError):
                pems.append(load_signing_material(s.keys_dir).trust_anchor_pem)
        return "\n".join(pems) or None

    async def verify(self, data: bytes) -> dict[str, Any]:
        s = self.settings
        image = decode_image(data, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)
        c2pa_report, reading = await asyncio.gather(
            asyncio.to_thread(read_c2pa, data, sniff_mime(data), self.trust_anchors()),
            asyncio.to_thread(self.watermarker.decode, image),
        )
        record = None
        if reading.found and reading.payload is not None:
            found = await self.records.by_watermark(reading.payload.hex())
            record = found.as_dict() if found else None
        return {
            "c2pa": c2pa_report,
            "watermark": {
                "found": reading.found,
                "payload": reading.payload.hex() if reading.payload else None,
                "confidence": reading.confidence,
            },
            "record": record,
            "provenance_found": c2pa_report["state"] is not None or record is not None,
        }
