"""How the subject's likeness reached the model, as the C2PA manifest states it.

Reference photos become real C2PA ingredients (``c2pa.ingredient.v3``, relationship
``inputTo``: an input to the AI model), each carrying only a neutral title, its media type and
the SHA-256 of the uploaded file. No thumbnail, no copy of the data, no manifest of its own: the
file shows *that* photos were used and lets whoever holds a photo check it was one of them, but
shows no one the photos.

Why the ingredients are declared in the manifest definition instead of through
``Builder.add_ingredient(json, format, stream)``: given a stream, c2pa parses the photo. If the
photo carries its own C2PA manifest (phones and cameras sign photos), c2pa copies that whole
manifest store into ours, *with its claim thumbnail*, whatever the builder's thumbnail setting;
it also copies the file's XMP instance id, which links our output to the user's original. A
definition that never sees the bytes cannot leak them. The price: c2pa records no hash of an
ingredient it did not read (its v3 ingredient has no field for the hash of a plain asset, and
its ``data`` field always embeds the bytes), so the hash goes into the ingredient's assertion
``metadata`` under :data:`HASH_KEY`. The ingredient assertion itself is hashed into the signed
claim, so that SHA-256 is bound to the signature like every other assertion.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consentry.policies import codes
from consentry.policies.errors import BadInputError
from consentry.policies.limits import MAX_REFERENCES

__all__ = [
    "COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA",
    "HASH_KEY",
    "MODES",
    "TRAINED_ALGORITHMIC_MEDIA",
    "ReferenceIngredient",
    "check_personalization",
    "created_action",
    "digital_source_type",
    "ingredient_definitions",
    "ingredient_ids",
    "read_ingredients",
    "read_source_type",
]

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)
MODES = ("txt2img", "img2img", "ip_adapter")
"""The generation modes (the values of ``consentry.generation.base.GenerationMode``)."""
INPUT_TO = "inputTo"
HASH_KEY = "org.consentry.hash"
"""The ingredient ``metadata`` entry holding ``{"alg": "sha256", "hash": <hex>}``."""

# An id like the ones the gateway makes (``adp_`` + 16 hex digits): short enough that neither
# weights nor a name can travel as an "id".
_ADAPTER_ID = re.compile(r"[a-z]{3}_[0-9a-f]{16}")
_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _invalid(detail: str) -> BadInputError:
    return BadInputError(detail, code=codes.MANIFEST_INFO_INVALID)


@dataclass(frozen=True, slots=True)
class ReferenceIngredient:
    """One reference photo as uploaded: the file's bytes and media type. Only ``sha256`` (of
    ``data``) and ``media_type`` go into the manifest; ``data`` stays out of reprs and logs."""

    data: bytes = field(repr=False)
    media_type: str
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes) or not self.data:
            raise _invalid("a reference's data must be the non-empty bytes of the uploaded file")
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE.fullmatch(self.media_type):
            raise _invalid(f"a reference's media_type must be an image/* media type, got {self.media_type!r}")
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())


def check_personalization(mode: object, adapter_id: object, references: Sequence[object]) -> list[str]:
    """The problems with how a ManifestInfo says the likeness was used (empty when none).

    The mode and the references must agree, so the manifest cannot claim a photo was used that
    was not, nor hide one that was: text-to-image uses none; image-to-image and IP-Adapter
    start from at least one.
    """
    problems = []
    if not isinstance(mode, str) or mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if adapter_id is not None and not (isinstance(adapter_id, str) and _ADAPTER_ID.fullmatch(adapter_id)):
        problems.append("adapter_id must be an id like 'adp_' + 16 lowercase hex digits (never weights)")
    if not all(isinstance(r, ReferenceIngredient) for r in references):
        problems.append("references must be ReferenceIngredient values")
    if len(references) > MAX_REFERENCES:
        problems.append(f"at most {MAX_REFERENCES} references")
    if mode == "txt2img" and references:
        problems.append("a txt2img generation uses no reference photo; list references only when used")
    if mode in ("img2img", "ip_adapter") and not references:
        problems.append(f"a {mode} generation starts from at least one reference photo; pass it")
    return problems


def digital_source_type(mode: str) -> str:
    """img2img denoises the subject's photo, so the output is that photo composited with model
    output (IPTC's term for AI edits of real media such as in/outpainting); text-to-image and
    IP-Adapter (which conditions on the face, not on the photo's pixels) make new media."""
    return COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA if mode == "img2img" else TRAINED_ALGORITHMIC_MEDIA


def _title(index: int) -> str:
    return f"reference-{index + 1}"  # never the uploaded file's name


def ingredient_ids(references: Sequence[ReferenceIngredient]) -> list[str]:
    """The labels an action's ``parameters.ingredientIds`` names; c2pa turns them into hashed
    URIs of the ingredient assertions, linking the action to its inputs."""
    return [_title(i) for i in range(len(references))]


def ingredient_definitions(references: Sequence[ReferenceIngredient]) -> list[dict[str, Any]]:
    """The manifest definition's ``ingredients``: one hash-only ``inputTo`` ingredient each.

    No ``thumbnail``, ``data``, ``instance_id`` or manifest: nothing of the photo, nothing that
    links to the user's original file. ``label`` only links the action (c2pa replaces it).
    """
    return [
        {
            "title": _title(i),
            "format": ref.media_type,
            "relationship": INPUT_TO,
            "label": _title(i),
            "description": "reference photo input to the model; bound by its hash, not embedded",
            "metadata": {HASH_KEY: {"alg": "sha256", "hash": ref.sha256}},
        }
        for i, ref in enumerate(references)
    ]


def read_ingredients(manifest: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """What a verifier may see of each ingredient of a manifest (the reader's JSON): title,
    relationship, format, the SHA-256 it is bound by (None when it declares none), and whether
    anything of it is ``embedded`` in the file (a thumbnail, its data, or a C2PA manifest of its
    own, which may carry a thumbnail). Works on any signer's manifest, not only ours."""
    found = []
    for item in manifest.get("ingredients") or []:
        if not isinstance(item, dict):
            continue
        meta = item.get("metadata")
        bound = meta.get(HASH_KEY) if isinstance(meta, dict) else None
        digest = bound.get("hash") if isinstance(bound, dict) and bound.get("alg") == "sha256" else None
        ok = isinstance(digest, str) and _HEX64.fullmatch(digest) is not None
        found.append(
            {
                "title": item.get("title"),
                "relationship": item.get("relationship"),
                "format": item.get("format"),
                "hash": digest if ok else None,
                "hash_alg": "sha256" if ok else None,
                "embedded": any(k in item for k in ("thumbnail", "data", "active_manifest", "manifest_data")),
            }
        )
    return tuple(found)


def created_action(
    *,
    software_agent: Mapping[str, str],
    model: str,
    untrained: bool,
    mode: str,
    adapter_id: str | None,
    references: Sequence[ReferenceIngredient],
) -> dict[str, Any]:
    """The manifest's one action.

    ``c2pa.created`` in every mode, img2img included: C2PA 2.x keeps ``c2pa.opened`` /
    ``c2pa.edited`` for an asset with a *parentOf* ingredient, a version of that asset, and a
    parent is what viewers show (its manifest, its thumbnail): here a copy of the subject's photo.
    The photos are *inputs to* the model instead (``inputTo``, linked through the action's
    ``ingredients``), and img2img's derivation from a photo is what the composite
    ``digitalSourceType`` states.
    """
    note = " by an untrained model (noise-like output, for testing only)" if untrained else ""
    used = f" by {mode}" + (f" from {len(references)} reference photo(s)" if references else "")
    parameters: dict[str, Any] = {
        "org.consentry.model": model,
        "org.consentry.untrained": untrained,
        "org.consentry.mode": mode,
        "org.consentry.adapter_id": adapter_id,
    }
    if references:
        # c2pa resolves these labels into hashed URIs of the ingredient assertions
        # (``parameters.ingredients``), tying the action to the photos it took as input.
        parameters["ingredientIds"] = ingredient_ids(references)
    return {
        "action": "c2pa.created",
        "digitalSourceType": digital_source_type(mode),
        "softwareAgent": dict(software_agent),
        "description": f"Generated with {model}{used}{note}",
        "parameters": parameters,
    }


def read_source_type(manifest: Mapping[str, Any]) -> str | None:
    """The digitalSourceType of a manifest's first action (None when it states none)."""
    for item in manifest.get("assertions") or []:
        if isinstance(item, dict) and str(item.get("label", "")).startswith("c2pa.actions"):
            actions = (item.get("data") or {}).get("actions") or [{}]
            found = actions[0].get("digitalSourceType") if isinstance(actions[0], dict) else None
            return found if isinstance(found, str) else None
    return None
