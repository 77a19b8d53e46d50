"""What a provenance check found, and a plain statement of what that does and does not prove.

A verifier's answer gets read by people deciding about an image: a platform's moderators, a
subject who found a picture of themselves. "Provenance found" is easy to over-read, so every
report carries an :class:`Assessment` naming the evidence it rests on (``basis``) and, in
sentences, what follows from it and what does not. The evidence differs in kind:

* a valid C2PA manifest binds these exact bytes to a signed claim (a trusted one also names
  who signed, through a configured trust anchor), but any re-encoding drops it;
* the watermark survives re-encoding, resizing and crops, and only this deployment's keys make
  or read it, so it names the record an image was released under, but it says nothing about
  whether the pixels changed since, nor who holds the copy;
* a signed manifest may say the image was made from reference photos: it lists them as
  ingredients bound by SHA-256, and the report says whether anything of them (a thumbnail, a
  copy) is in the file, so a reader learns *that* photos were used without seeing them.

The types are frozen dataclasses of plain fields, so the HTTP layer can declare them as
response models; :meth:`ProvenanceReport.as_dict` is the JSON shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from consentry.provenance.watermark import ALGORITHM

__all__ = ["Assessment", "Basis", "ProvenanceReport", "WatermarkFinding", "assess"]

Basis = Literal["c2pa", "watermark", "none"]
_SIGNED = ("Trusted", "Valid")
_HOW = {
    "txt2img": "text-to-image",
    "img2img": "image-to-image (derived from the photo)",
    "ip_adapter": "IP-Adapter conditioning on the face",
}


@dataclass(frozen=True, slots=True)
class WatermarkFinding:
    """The decoded mark: ``payload`` in hex, ``key_id`` the deployment key that read it."""

    found: bool
    payload: str | None
    confidence: float
    key_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "payload": self.payload,
            "confidence": self.confidence,
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class Assessment:
    """``basis``: the strongest evidence present (a valid C2PA manifest, else this deployment's
    watermark, else none). ``conflicts``: evidence that disagrees with itself, which a reader
    should treat as a sign of tampering."""

    basis: Basis
    proves: tuple[str, ...]
    does_not_prove: tuple[str, ...]
    conflicts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "proves": list(self.proves),
            "does_not_prove": list(self.does_not_prove),
            "conflicts": list(self.conflicts),
        }


@dataclass(frozen=True, slots=True)
class ProvenanceReport:
    """The C2PA report, the watermark, the record it names, and what all that proves."""

    c2pa: dict[str, Any]
    watermark: WatermarkFinding
    record: dict[str, Any] | None
    provenance_found: bool
    assessment: Assessment

    def as_dict(self) -> dict[str, Any]:
        return {
            "c2pa": self.c2pa,
            "watermark": self.watermark.as_dict(),
            "record": self.record,
            "provenance_found": self.provenance_found,
            "assessment": self.assessment.as_dict(),
        }


def _c2pa_part(state: str | None) -> tuple[list[str], list[str]]:
    if state not in _SIGNED:
        if state == "Invalid":
            return [], [
                "anything the C2PA manifest in the file states: it fails validation (the bytes "
                "changed after signing, or the manifest is damaged or forged)"
            ]
        return [], []
    proves = [
        "these exact bytes are the ones a signed C2PA claim covers: its hash binding and signature verify"
    ]
    if state == "Trusted":
        proves.append("the claim was signed with a certificate that chains to a trust anchor configured here")
        unproven = []
    else:
        unproven = [
            "who signed the claim: its certificate chains to no trust anchor configured here, and "
            "anyone can make a certificate"
        ]
    unproven.append("that what the claim states (model, consent, record) is true: that is the signer's word")
    return proves, unproven


def _likeness_part(c2pa: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """What a signed manifest says of how the likeness was used: the reference photos it was
    made from (bound by hash, embedded or not) and the subject's adapter, by id."""
    generation = c2pa.get("generation") or {}
    inputs = [i for i in c2pa.get("ingredients") or [] if i.get("relationship") == "inputTo"]
    proves, unproven = [], []
    if inputs:
        how = _HOW.get(str(generation.get("mode")))
        hashed = sum(1 for i in inputs if i.get("hash"))
        embedded = sum(1 for i in inputs if i.get("embedded"))
        made = f"the image was made from {len(inputs)} reference photo(s)" + (f" by {how}" if how else "")
        bound = "bound by hash (SHA-256)" if hashed == len(inputs) else f"{hashed} of them bound by hash"
        proves.append(f"the signed claim states {made}, {bound}")
        # Not the signer's word: the reader sees what the ingredients carry.
        proves.append(
            "the photos are not in the file: no thumbnail, copy or manifest of them is embedded"
            if not embedded
            else f"{embedded} of the reference photos are in the file (a thumbnail, a copy or a manifest "
            "of their own is embedded)"
        )
        unproven.append(
            "which photos were used: the file holds only their SHA-256 hashes, so only someone holding "
            "a photo can check that it was one of them"
        )
    adapter = generation.get("adapter_id")
    if isinstance(adapter, str) and adapter:
        proves.append(
            f"the signed claim states the subject's LoRA adapter {adapter} was used (its id only: "
            "no weights are in the file)"
        )
    return proves, unproven


def _watermark_part(
    basis: Basis, watermark: WatermarkFinding, record: Mapping[str, Any] | None, fp_bound: float
) -> tuple[list[str], list[str]]:
    if not watermark.found:
        if basis != "none":
            return [], []
        return [], [
            "that this gateway did not produce the image: rotation, unusual rescaling or heavy "
            "editing can destroy the mark",
            "whether the image is AI-generated at all: other generators leave no mark this gateway can read",
        ]
    proves = [
        f"the image carries an invisible mark made with this deployment's watermark key "
        f"{watermark.key_id} (an unmarked image reads as marked with probability at most {fp_bound:.1e})"
    ]
    unproven = []
    if record is not None:
        proves.append(
            f"the mark names generation record {record.get('id')}: the image was released by this "
            "gateway, or derived from an image it released"
        )
    else:
        unproven.append(
            f"that this gateway released it: the mark's payload {watermark.payload} names no generation "
            "record here"
        )
    if basis == "watermark":
        unproven += [
            "that the pixels are unchanged since release: the mark survives re-encoding, resizing, "
            "crops and edits, and no valid C2PA manifest binds these bytes",
            "that the mark was not copied onto another image by someone holding this deployment's "
            "watermark key",
        ]
    return proves, unproven


def _conflicts(
    c2pa: Mapping[str, Any], watermark: WatermarkFinding, record: Mapping[str, Any] | None
) -> list[str]:
    """Where a valid manifest and the mark disagree: a mark moved onto a signed image, or a
    manifest moved onto a marked one."""
    if c2pa.get("state") not in _SIGNED:
        return []
    found = []
    binding = c2pa.get("soft_binding") or {}
    claimed = [b.get("value") for b in binding.get("blocks") or [] if isinstance(b, dict)]
    if claimed and watermark.found and watermark.payload not in claimed:
        found.append(
            f"the signed manifest binds watermark {claimed[0]}, but the image carries {watermark.payload}"
        )
    if claimed and not watermark.found and binding.get("alg") == ALGORITHM:
        found.append(
            f"the signed manifest binds watermark {claimed[0]}, but no mark made with this "
            "deployment's keys decodes (another deployment's key, or a damaged mark)"
        )
    claimed_record = (c2pa.get("generation") or {}).get("record_id")
    if record is not None and claimed_record and claimed_record != record.get("id"):
        found.append(
            f"the signed manifest names record {claimed_record}, but the mark names {record.get('id')}"
        )
    return found


def assess(
    c2pa: Mapping[str, Any],
    watermark: WatermarkFinding,
    record: Mapping[str, Any] | None,
    *,
    false_positive_bound: float,
) -> Assessment:
    """The assessment of one verification; ``false_positive_bound`` is the watermarker's (it
    grows with the number of keys the deployment decodes with)."""
    state = c2pa.get("state")
    basis: Basis = "c2pa" if state in _SIGNED else "watermark" if watermark.found else "none"
    c2pa_proves, c2pa_unproven = _c2pa_part(state)
    if state in _SIGNED:
        likeness_proves, likeness_unproven = _likeness_part(c2pa)
        c2pa_proves += likeness_proves
        c2pa_unproven += likeness_unproven
    wm_proves, wm_unproven = _watermark_part(basis, watermark, record, false_positive_bound)
    unproven = c2pa_unproven + wm_unproven
    if basis != "none":
        unproven.append("who holds or shared this copy")
    return Assessment(
        basis=basis,
        proves=tuple(c2pa_proves + wm_proves),
        does_not_prove=tuple(unproven),
        conflicts=tuple(_conflicts(c2pa, watermark, record)),
    )
