"""Build, sign and read the C2PA manifest every released image carries.

The manifest says the image was *created* as ``trainedAlgorithmicMedia`` (or, for img2img,
``compositeWithTrainedAlgorithmicMedia``), by which model (and whether that model was untrained),
in which mode and with which of the subject's adapters (by id), binds itself softly to the
invisible watermark, and carries a consent assertion that names the consent record only by hash:
no biometrics, no names. Reference photos are ingredients bound by hash, never embedded (see
:mod:`provenance.ingredients`).

Signing goes through a callback (:class:`ClaimSigner`), so the private key can live in a KMS or
HSM; there is no timestamp authority and every fetching option of the SDK is switched off, so
neither signing nor reading touches the network.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConsentryError, InvalidImageError, StageError
from consentry.provenance.ingredients import (
    MODES,
    ReferenceIngredient,
    check_personalization,
    created_action,
    ingredient_definitions,
    read_ingredients,
    read_source_type,
)
from consentry.provenance.ingredients import TRAINED_ALGORITHMIC_MEDIA as TRAINED_ALGORITHMIC_MEDIA

CONSENT_LABEL = "org.consentry.consent"
GENERATION_LABEL = "org.consentry.generation"
SOFT_BINDING_LABEL = "c2pa.soft-binding"
MAX_SCORES = 16  # scores are a handful of similarities, never an embedding smuggled in as floats

# c2pa itself is imported where a manifest is signed or read, not with this module: every gate
# command imports this module through the wiring, and most (audit, grants, principals) never sign.
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")

# No thumbnail (it would be a copy of the face); nothing fetched over the network when signing
# (no OCSP, no certificate status) or when reading (no remote manifests).
_NO_NETWORK = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
_SIGN_SETTINGS = {**_NO_NETWORK, "builder": {"thumbnail": {"enabled": False}}}


# C2PA errors that mean "the manifest in this file is malformed or fails verification": a
# reader reports those as an Invalid manifest instead of failing the request. (c2pa also raises
# ``Other`` for a damaged JUMBF box; an unparseable *container* is told apart by its message.)
def _broken_manifest() -> tuple[type[Exception], ...]:
    import c2pa

    return (
        c2pa.C2paError.Decoding,
        c2pa.C2paError.Verify,
        c2pa.C2paError.Signature,
        c2pa.C2paError.Assertion,
        c2pa.C2paError.AssertionNotFound,
        c2pa.C2paError.Manifest,
        c2pa.C2paError.Json,
        c2pa.C2paError.Other,
    )


_UNPARSEABLE = "asset could not be parsed"


class ClaimSigner(Protocol):
    """What signing needs: the PEM chain to embed (leaf first) and an ES256 signature callback.

    :class:`provenance.keys.SigningMaterial` is one; a KMS-backed signer is another.
    """

    @property
    def cert_chain_pem(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """Everything the manifest states about one released image."""

    title: str
    claim_generator: str  # "name/version", e.g. "consentry/0.1.0"
    record_id: str
    model: str
    untrained: bool
    watermark_algorithm: str
    watermark_payload_hex: str
    consent_record_hash: str | None  # SHA-256 hex of the consent record id, never the id or a name
    """None when the request named no subject (no likeness was consented to or asked for)."""
    purpose: str | None
    verifier_scores: Mapping[str, float] = field(default_factory=dict)
    policy_version: str = ""
    mode: str = "txt2img"
    """One of :data:`MODES` (a ``GenerationMode`` is accepted and stored as its plain value)."""
    adapter_id: str | None = None
    """The id of the subject's LoRA adapter the job loaded (never its weights), or None."""
    references: tuple[ReferenceIngredient, ...] = ()
    """The reference photos the model took as input, in order; only their hashes are signed."""

    def __post_init__(self) -> None:
        problems = check_personalization(self.mode, self.adapter_id, self.references)
        if not problems:
            # A StrEnum member compares equal to its value; store the plain str so JSON and
            # reprs never depend on the caller's enum type.
            object.__setattr__(self, "mode", MODES[MODES.index(self.mode)])
            object.__setattr__(self, "references", tuple(self.references))
        if "/" not in self.claim_generator:
            problems.append("claim_generator must be 'name/version'")
        if self.consent_record_hash is not None and not _HEX64.fullmatch(self.consent_record_hash):
            problems.append("consent_record_hash must be 64 lowercase hex characters (SHA-256)")
        if not _HEX16.fullmatch(self.watermark_payload_hex):
            problems.append("watermark_payload_hex must be 16 lowercase hex characters")
        scores = self.verifier_scores
        if len(scores) > MAX_SCORES or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in scores.values()
        ):
            problems.append(f"verifier_scores must be at most {MAX_SCORES} finite numbers")
        if problems:
            raise BadInputError("; ".join(problems), code=codes.MANIFEST_INFO_INVALID)


@dataclass(frozen=True, slots=True)
class ManifestReport:
    """What a reader found: ``state`` is "Trusted", "Valid", "Invalid", or None (no manifest)."""

    state: str | None
    active_manifest: dict[str, Any] | None = None
    consent: dict[str, Any] | None = None
    generation: dict[str, Any] | None = None
    soft_binding: dict[str, Any] | None = None
    validation_errors: tuple[str, ...] = ()
    ingredients: tuple[dict[str, Any], ...] = ()
    """What :func:`provenance.ingredients.read_ingredients` shows of each ingredient."""
    digital_source_type: str | None = None
    """The first action's IPTC digital source type (None when the manifest states none)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consent": self.consent,
            "generation": self.generation,
            "soft_binding": self.soft_binding,
            "validation_errors": list(self.validation_errors),
            "active_manifest": self.active_manifest,
            "ingredients": [dict(i) for i in self.ingredients],
            "digital_source_type": self.digital_source_type,
        }


def build_manifest(info: ManifestInfo) -> dict[str, Any]:
    """The manifest definition handed to the C2PA builder (exposed for inspection and tests)."""
    name, version = info.claim_generator.split("/", 1)
    return {
        "claim_generator_info": [{"name": name, "version": version}],
        "title": info.title,
        "ingredients": ingredient_definitions(info.references),
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        created_action(
                            software_agent={"name": name, "version": version},
                            model=info.model,
                            untrained=info.untrained,
                            mode=info.mode,
                            adapter_id=info.adapter_id,
                            references=info.references,
                        )
                    ]
                },
            },
            {
                "label": GENERATION_LABEL,
                "data": {
                    "record_id": info.record_id,
                    "model": info.model,
                    "untrained": info.untrained,
                    "mode": info.mode,
                    "adapter_id": info.adapter_id,
                },
            },
            {
                "label": SOFT_BINDING_LABEL,
                "data": {
                    "alg": info.watermark_algorithm,
                    "name": "invisible watermark naming the generation record",
                    "blocks": [{"scope": {}, "value": info.watermark_payload_hex}],
                    "pad": [],
                },
            },
            {
                "label": CONSENT_LABEL,
                "data": {
                    "subject_named": info.consent_record_hash is not None,
                    **(
                        {"consent_record_hash": info.consent_record_hash, "hash_alg": "sha256"}
                        if info.consent_record_hash is not None
                        else {}
                    ),
                    "purpose": info.purpose,
                    "verifier_scores": {k: float(v) for k, v in info.verifier_scores.items()},
                    "policy_version": info.policy_version,
                },
            },
        ],
    }


def _check_mime(mime: str, supported: list[str]) -> None:
    if not mime.startswith("image/") or mime not in supported:
        raise BadInputError(f"C2PA cannot handle {mime!r} here", code=codes.C2PA_UNSUPPORTED_FORMAT)


def sign_image(image_bytes: bytes, mime: str, info: ManifestInfo, material: ClaimSigner) -> bytes:
    """Return ``image_bytes`` with a signed C2PA manifest embedded (ES256, no timestamp)."""
    import c2pa

    _check_mime(mime, c2pa.Builder.get_supported_mime_types())
    callback_errors: list[BaseException] = []

    def sign(data: bytes) -> bytes:
        # c2pa swallows callback exceptions (it logs them and reports a generic failure), so
        # keep the original to chain from: a KMS outage should say so.
        try:
            return material.sign(data)
        except Exception as exc:
            callback_errors.append(exc)
            raise

    out = io.BytesIO()
    es256 = c2pa.C2paSigningAlg.ES256
    try:
        with (
            c2pa.Context.from_dict(_SIGN_SETTINGS) as context,
            # tsa_url=None: no timestamp authority, so signing never leaves the process.
            c2pa.Signer.from_callback(sign, es256, material.cert_chain_pem, None) as signer,
            c2pa.Builder(build_manifest(info), context=context) as builder,
        ):
            builder.sign(signer, mime, io.BytesIO(image_bytes), out)
    except c2pa.C2paError as exc:
        cause: BaseException = callback_errors[0] if callback_errors else exc
        raise StageError(f"C2PA signing failed: {exc}", code=codes.C2PA_SIGN_FAILED) from cause
    return out.getvalue()


def _assertion(manifest: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    for item in manifest.get("assertions", []):
        if item.get("label") == label:
            data = item.get("data")
            return data if isinstance(data, dict) else None
    return None


def _failures(results: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not results:
        return ()
    groups = [results.get("activeManifest") or {}]
    groups += [d.get("validationDeltas") or {} for d in results.get("ingredientDeltas") or []]
    return tuple(f"{f.get('code')}: {f.get('explanation', '')}" for g in groups for f in g.get("failure", []))


def read_manifest(image_bytes: bytes, mime: str, trust_anchors_pem: str | None) -> ManifestReport:
    """Validate the C2PA manifest of an image against ``trust_anchors_pem`` (None: no anchors,
    so a good signature reads as "Valid" and never "Trusted")."""
    import c2pa

    _check_mime(mime, c2pa.Reader.get_supported_mime_types())
    settings: dict[str, Any] = dict(_NO_NETWORK)
    if trust_anchors_pem:
        settings["trust"] = {"trust_anchors": trust_anchors_pem}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(image_bytes), None, context)
            if reader is None:
                return ManifestReport(state=None)
            with reader:
                store = json.loads(reader.json())
    except (c2pa.C2paError.NotSupported, c2pa.C2paError.Io) as exc:
        raise InvalidImageError(f"not a readable {mime} image: {exc}") from exc
    except _broken_manifest() as exc:
        if _UNPARSEABLE in str(exc):
            raise InvalidImageError(f"not a readable {mime} image: {exc}") from exc
        # A manifest is there but cannot be decoded or verified: that is a tampered or broken
        # credential, which a verifier reports, not a failure of the verifier.
        return ManifestReport(state="Invalid", validation_errors=(f"c2pa.unreadable: {exc}",))
    except c2pa.C2paError as exc:
        raise ConsentryError(f"C2PA reading failed: {exc}", code=codes.C2PA_READ_FAILED) from exc

    active = store.get("manifests", {}).get(store.get("active_manifest", ""))
    if active is None:
        return ManifestReport(state="Invalid", validation_errors=_failures(store.get("validation_results")))
    return ManifestReport(
        state=store.get("validation_state"),
        active_manifest=active,
        consent=_assertion(active, CONSENT_LABEL),
        generation=_assertion(active, GENERATION_LABEL),
        soft_binding=_assertion(active, SOFT_BINDING_LABEL),
        validation_errors=_failures(store.get("validation_results")),
        ingredients=read_ingredients(active),
        digital_source_type=read_source_type(active),
    )
