"""The manifest says how the likeness was used (mode, adapter, reference photos) and shows no
one the photos: references are C2PA ingredients bound by SHA-256, with no thumbnail or copy."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import c2pa
import pytest
from PIL import Image

from consentry.generation.base import GenerationMode
from consentry.policies.errors import BadInputError
from consentry.provenance.ingredients import (
    COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA,
    TRAINED_ALGORITHMIC_MEDIA,
    ReferenceIngredient,
    read_ingredients,
)
from consentry.provenance.keys import SigningMaterial, init_dev_keys, load_signing_material
from consentry.provenance.manifest import ManifestInfo, ManifestReport, read_manifest, sign_image
from consentry.provenance.report import WatermarkFinding, assess
from consentry.provenance.verification import read_c2pa

ADAPTER = "adp_0123456789abcdef"
GRANT_HASH = hashlib.sha256(b"grant-0001").hexdigest()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
DIGITAL_CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
NO_MARK = WatermarkFinding(found=False, payload=None, confidence=0.0, key_id=None)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> SigningMaterial:
    keys = tmp_path_factory.mktemp("keys")
    init_dev_keys(keys)
    return load_signing_material(keys)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def output_png() -> bytes:
    """A tiny generated image (what gets signed)."""
    return _encode(Image.new("RGB", (64, 64), (40, 90, 160)), "PNG")


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> tuple[bytes, bytes]:
    """Two real reference uploads: a JPEG as taken, and a PNG of another face."""
    jpeg = (faces_dir / "groups" / "000_5.jpg").read_bytes()
    with Image.open(faces_dir / "groups" / "010_2.jpg") as other:
        png = _encode(other.convert("RGB").resize((256, 256)), "PNG")
    return jpeg, png


def _refs(photos: tuple[bytes, bytes]) -> tuple[ReferenceIngredient, ...]:
    return (ReferenceIngredient(photos[0], "image/jpeg"), ReferenceIngredient(photos[1], "image/png"))


def _info(**overrides: Any) -> ManifestInfo:
    fields: dict[str, Any] = {
        "title": "consentry-gen_1.png",
        "claim_generator": "consentry/0.1.0",
        "record_id": "gen_1",
        "model": "tiny-sd-untrained",
        "untrained": True,
        "watermark_algorithm": "org.consentry.watermark.dwtdctsvd.v1",
        "watermark_payload_hex": "0011223344556677",
        "consent_record_hash": GRANT_HASH,
        "purpose": "portrait",
    }
    fields.update(overrides)
    return ManifestInfo(**fields)


def _created(report: ManifestReport) -> dict[str, Any]:
    assert report.active_manifest is not None
    (actions,) = [a for a in report.active_manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    return created


def test_img2img_lists_its_references_by_hash_and_embeds_none_of_them(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    info = _info(mode="img2img", adapter_id=ADAPTER, references=_refs(photos))
    signed = sign_image(output_png, "image/png", info, material)
    report = read_manifest(signed, "image/png", material.trust_anchor_pem)
    assert report.state == "Trusted" and report.validation_errors == ()

    assert report.digital_source_type == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    created = _created(report)
    assert created["digitalSourceType"] == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    assert created["parameters"]["org.consentry.mode"] == "img2img"
    assert created["parameters"]["org.consentry.adapter_id"] == ADAPTER
    # The action names its inputs: hashed URIs of the two ingredient assertions.
    linked = [i["url"] for i in created["parameters"]["ingredients"]]
    assert len(linked) == 2 and all("c2pa.ingredient" in url for url in linked)

    assert report.generation == {
        "record_id": "gen_1",
        "model": "tiny-sd-untrained",
        "untrained": True,
        "mode": "img2img",
        "adapter_id": ADAPTER,
    }
    assert report.consent is not None and report.consent["consent_record_hash"] == GRANT_HASH

    assert report.ingredients == (
        {
            "title": "reference-1",
            "relationship": "inputTo",
            "format": "image/jpeg",
            "hash": hashlib.sha256(photos[0]).hexdigest(),
            "hash_alg": "sha256",
            "embedded": False,
        },
        {
            "title": "reference-2",
            "relationship": "inputTo",
            "format": "image/png",
            "hash": hashlib.sha256(photos[1]).hexdigest(),
            "hash_alg": "sha256",
            "embedded": False,
        },
    )
    manifest = report.active_manifest
    assert manifest is not None and "thumbnail" not in manifest
    for ingredient in manifest["ingredients"]:
        assert ingredient["relationship"] == "inputTo"
        assert not {"thumbnail", "data", "active_manifest", "manifest_data"} & set(ingredient)
        assert "instance_id" not in ingredient  # nothing that links to the user's original file


def test_no_pixels_of_the_references_are_in_the_signed_file(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    with_refs = sign_image(output_png, "image/png", _info(mode="img2img", references=_refs(photos)), material)
    without = sign_image(output_png, "image/png", _info(), material)
    # Two ingredient assertions are a few hundred bytes; the photos are tens of kilobytes each.
    assert min(len(p) for p in photos) > 50_000
    assert len(with_refs) - len(without) < 2_000
    assert with_refs.count(PNG_MAGIC) == 1 and with_refs.startswith(PNG_MAGIC)  # only the output itself
    assert JPEG_SOI not in with_refs
    for photo in photos:  # no run of the photos' bytes either (a 32-byte window every 4 KB)
        assert not any(photo[at : at + 32] in with_refs for at in range(64, len(photo) - 32, 4096))


def test_the_hash_is_tied_to_the_bytes_and_to_the_signature(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    changed = bytearray(photos[1])
    changed[len(changed) // 2] ^= 0x01
    one = _refs(photos)
    other = (one[0], ReferenceIngredient(bytes(changed), "image/png"))
    signed = sign_image(output_png, "image/png", _info(mode="ip_adapter", references=other), material)
    report = read_manifest(signed, "image/png", material.trust_anchor_pem)
    first, second = report.ingredients
    assert first["hash"] == one[0].sha256 == hashlib.sha256(photos[0]).hexdigest()
    assert second["hash"] == hashlib.sha256(bytes(changed)).hexdigest() != one[1].sha256

    # The hash sits in an ingredient assertion the claim hashes: editing it breaks the manifest.
    forged = bytearray(signed)
    at = forged.find(second["hash"].encode())
    assert at > 0
    forged[at] = ord("0") if forged[at] != ord("0") else ord("1")
    assert read_manifest(bytes(forged), "image/png", material.trust_anchor_pem).state == "Invalid"


def test_a_c2pa_signed_reference_brings_neither_its_manifest_nor_its_thumbnail(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    # A photo from a phone that signs its pictures: it carries a manifest with a thumbnail. Given
    # to Builder.add_ingredient as a stream, c2pa would copy both into our file.
    settings = {
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        "builder": {"thumbnail": {"enabled": True}},
    }
    camera = io.BytesIO()
    captured = {"action": "c2pa.created", "digitalSourceType": DIGITAL_CAPTURE}
    definition = {
        "claim_generator_info": [{"name": "camera", "version": "1"}],
        "title": "IMG_0001.jpg",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [captured]}}],
    }
    with (
        c2pa.Context.from_dict(settings) as context,
        c2pa.Signer.from_callback(
            material.sign, c2pa.C2paSigningAlg.ES256, material.cert_chain_pem, None
        ) as signer,
        c2pa.Builder(definition, context=context) as builder,
    ):
        builder.sign(signer, "image/jpeg", io.BytesIO(photos[0]), camera)
    signed_photo = camera.getvalue()
    assert signed_photo.count(JPEG_SOI) >= 2  # the photo and its thumbnail

    reference = ReferenceIngredient(signed_photo, "image/jpeg")
    out = sign_image(output_png, "image/png", _info(mode="img2img", references=(reference,)), material)
    assert JPEG_SOI not in out and b"IMG_0001" not in out and b"camera" not in out
    report = read_manifest(out, "image/png", material.trust_anchor_pem)
    assert report.state == "Trusted"
    (ingredient,) = report.ingredients
    assert ingredient["hash"] == hashlib.sha256(signed_photo).hexdigest() and not ingredient["embedded"]


def test_txt2img_without_references_is_trained_media_with_no_ingredients(
    material: SigningMaterial, output_png: bytes
) -> None:
    signed = sign_image(output_png, "image/png", _info(), material)
    report = read_manifest(signed, "image/png", material.trust_anchor_pem)
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert _created(report)["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert "ingredients" not in _created(report)["parameters"]
    assert report.ingredients == () and not (report.active_manifest or {}).get("ingredients")
    assert report.generation is not None
    assert report.generation["mode"] == "txt2img" and report.generation["adapter_id"] is None
    assert report.as_dict()["ingredients"] == []


def test_ip_adapter_is_trained_media_with_its_inputs(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    references = _refs(photos)[:1]
    signed = sign_image(output_png, "image/png", _info(mode="ip_adapter", references=references), material)
    report = read_manifest(signed, "image/png", None)
    assert report.state == "Valid" and report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert [i["relationship"] for i in report.ingredients] == ["inputTo"]


def test_the_assessment_says_photos_were_used_without_showing_them(
    material: SigningMaterial, output_png: bytes, photos: tuple[bytes, bytes]
) -> None:
    info = _info(mode=GenerationMode.img2img, adapter_id=ADAPTER, references=_refs(photos))
    signed = sign_image(output_png, "image/png", info, material)
    c2pa_report = read_c2pa(signed, "image/png", material.trust_anchor_pem)
    assert json.loads(json.dumps(c2pa_report)) == c2pa_report
    assert c2pa_report["digital_source_type"] == COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    assert [i["hash"] for i in c2pa_report["ingredients"]] == [r.sha256 for r in info.references]

    a = assess(c2pa_report, NO_MARK, None, false_positive_bound=1e-9)
    proves, unproven = " | ".join(a.proves), " | ".join(a.does_not_prove)
    assert a.basis == "c2pa"
    assert "the image was made from 2 reference photo(s) by image-to-image" in proves
    assert "bound by hash (SHA-256)" in proves and "the photos are not in the file" in proves
    assert f"LoRA adapter {ADAPTER}" in proves and "no weights" in proves
    assert "which photos were used" in unproven and "SHA-256 hashes" in unproven

    # Without references or adapter, nothing about them is claimed; unsigned, nothing at all.
    plain = read_c2pa(sign_image(output_png, "image/png", _info(), material), "image/png", None)
    for statement in assess(plain, NO_MARK, None, false_positive_bound=1e-9).proves:
        assert "reference photo" not in statement and "adapter" not in statement
    broken = {**c2pa_report, "state": "Invalid"}
    assert not any(
        "reference photo" in s for s in assess(broken, NO_MARK, None, false_positive_bound=1e-9).proves
    )


def test_an_embedded_ingredient_of_another_signer_is_reported_as_such() -> None:
    foreign = {
        "ingredients": [
            {"title": "face.jpg", "format": "image/jpeg", "relationship": "inputTo", "thumbnail": {}},
            {"title": "bg.jpg", "relationship": "componentOf", "metadata": {"org.consentry.hash": "x"}},
        ]
    }
    found = read_ingredients(foreign)
    assert [i["embedded"] for i in found] == [True, False] and [i["hash"] for i in found] == [None, None]
    report = {"state": "Valid", "generation": None, "ingredients": list(found)}
    proves = " | ".join(assess(report, NO_MARK, None, false_positive_bound=1e-9).proves)
    assert "made from 1 reference photo(s), 0 of them bound by hash" in proves
    assert "1 of the reference photos are in the file" in proves


def test_a_generation_mode_is_stored_as_its_plain_value() -> None:
    info = _info(
        mode=GenerationMode.ip_adapter, references=[ReferenceIngredient(b"\xff\xd8\xff", "image/jpeg")]
    )
    assert type(info.mode) is str and info.mode == "ip_adapter"
    assert isinstance(info.references, tuple)
    assert "data=" not in repr(info.references[0])  # the photo's bytes never land in a log line


@pytest.mark.parametrize(
    "overrides",
    [
        {"mode": "inpaint"},
        {"mode": 2},
        {"adapter_id": "adp_XYZ"},
        {"adapter_id": "Jane Doe"},
        {"adapter_id": "adp_" + "0" * 64},
        {"adapter_id": b"safetensors weights"},
        {"mode": "txt2img", "references": (ReferenceIngredient(b"x", "image/png"),)},
        {"mode": "img2img"},
        {"mode": "ip_adapter", "references": ()},
        {"mode": "img2img", "references": (b"raw bytes",)},
        {"mode": "img2img", "references": (ReferenceIngredient(b"x", "image/png"),) * 9},
    ],
)
def test_manifest_info_refuses_bad_personalization(overrides: dict[str, object]) -> None:
    with pytest.raises(BadInputError) as info:
        _info(**overrides)
    assert info.value.code == "manifest.info_invalid"


@pytest.mark.parametrize(
    ("data", "media_type"),
    [(b"", "image/png"), (b"x", "text/plain"), (b"x", "image/PNG; name=me.png"), ("x", "image/png")],
)
def test_a_reference_must_be_file_bytes_of_an_image_type(data: object, media_type: str) -> None:
    with pytest.raises(BadInputError) as info:
        ReferenceIngredient(data, media_type)  # type: ignore[arg-type]
    assert info.value.code == "manifest.info_invalid"
