"""The development PKI must satisfy C2PA's signer profile, and signed images must verify."""

from __future__ import annotations

import hashlib
import io
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from consentry.policies.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    InvalidImageError,
    StageError,
)
from consentry.provenance.keys import (
    CA_CERT_FILE,
    CHAIN_FILE,
    DOCUMENT_SIGNING,
    KEY_FILE,
    SigningMaterial,
    init_dev_keys,
    load_signing_material,
)
from consentry.provenance.manifest import (
    TRAINED_ALGORITHMIC_MEDIA,
    ManifestInfo,
    read_manifest,
    sign_image,
)

GRANT_HASH = hashlib.sha256(b"grant-0001").hexdigest()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    init_dev_keys(path)
    return path


@pytest.fixture(scope="module")
def material(keys_dir: Path) -> SigningMaterial:
    return load_signing_material(keys_dir)


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> Image.Image:
    return Image.open(faces_dir / "groups" / "000_5.jpg").convert("RGB")


def _info(**overrides: Any) -> ManifestInfo:
    fields: dict[str, Any] = {
        "title": "consentry-req-1.jpg",
        "claim_generator": "consentry/0.1.0",
        "record_id": "req-1",
        "model": "tiny-sd-untrained",
        "untrained": True,
        "watermark_algorithm": "org.consentry.watermark.dwtdctsvd.v1",
        "watermark_payload_hex": "0011223344556677",
        "consent_record_hash": GRANT_HASH,
        "purpose": "portrait",
        "verifier_scores": {"identity_similarity": 0.93, "other_identities_max": 0.12},
        "policy_version": "2026-11.1",
    }
    fields.update(overrides)
    return ManifestInfo(**fields)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


# -- keys ---------------------------------------------------------------------------------------


def test_dev_keys_follow_the_c2pa_signer_profile(keys_dir: Path) -> None:
    chain = x509.load_pem_x509_certificates((keys_dir / CHAIN_FILE).read_bytes())
    (root,) = x509.load_pem_x509_certificates((keys_dir / CA_CERT_FILE).read_bytes())
    leaf = chain[0]
    assert len(chain) == 2 and chain[1] == root

    assert root.subject == root.issuer
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    leaf.verify_directly_issued_by(root)

    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku and DOCUMENT_SIGNING in eku
    assert ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.signature_hash_algorithm is not None and leaf.signature_hash_algorithm.name == "sha256"

    assert stat.S_IMODE((keys_dir / KEY_FILE).stat().st_mode) == 0o600
    assert not list(keys_dir.glob("ca*key*"))  # the CA key is never written


def test_existing_keys_are_not_overwritten_without_force(tmp_path: Path) -> None:
    first = init_dev_keys(tmp_path)
    before = first.cert_chain.read_bytes()
    with pytest.raises(ConflictError) as info:
        init_dev_keys(tmp_path)
    assert info.value.code == "keys.exist"
    assert first.cert_chain.read_bytes() == before
    again = init_dev_keys(tmp_path, force=True)
    assert again.cert_chain.read_bytes() != before
    assert stat.S_IMODE(again.private_key.stat().st_mode) == 0o600


def test_missing_keys_say_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_signing_material(tmp_path / "nowhere")
    assert info.value.code == "keys.missing"
    assert "run `consentry keys init`" in str(info.value)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    a, b = init_dev_keys(tmp_path / "a"), init_dev_keys(tmp_path / "b")
    a.private_key.write_bytes(b.private_key.read_bytes())
    with pytest.raises(ConfigurationError) as info:
        load_signing_material(tmp_path / "a")
    assert info.value.code == "keys.invalid"


def test_signatures_are_raw_es256(material: SigningMaterial) -> None:
    sig = material.sign(b"claim bytes")
    assert len(sig) == 64
    leaf = x509.load_pem_x509_certificates(material.cert_chain_pem.encode())[0]
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(der, b"claim bytes", ec.ECDSA(hashes.SHA256()))
    assert "PRIVATE" not in repr(material) and "key=" not in repr(material)


# -- manifest -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_signed_photo_is_valid_then_trusted_with_the_dev_anchor(
    material: SigningMaterial, photo: Image.Image, fmt: str, mime: str
) -> None:
    signed = sign_image(_encode(photo, fmt), mime, _info(), material)
    with Image.open(io.BytesIO(signed)) as reopened:
        assert reopened.size == photo.size

    plain = read_manifest(signed, mime, None)
    assert plain.state == "Valid"
    trusted = read_manifest(signed, mime, material.trust_anchor_pem)
    assert trusted.state == "Trusted"
    assert trusted.validation_errors == ()

    manifest = trusted.active_manifest
    assert manifest is not None and manifest["title"] == "consentry-req-1.jpg"
    assert manifest["claim_generator_info"][0]["name"] == "consentry"
    assert manifest["claim_generator_info"][0]["version"] == "0.1.0"
    assert "thumbnail" not in manifest
    assert "time" not in manifest["signature_info"]  # no timestamp authority was contacted
    assert manifest["signature_info"]["common_name"] == "Consentry Development Claim Signer"
    (actions,) = [a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["parameters"]["org.consentry.untrained"] is True
    assert "untrained" in created["description"]

    assert trusted.generation == {
        "record_id": "req-1",
        "model": "tiny-sd-untrained",
        "untrained": True,
        "mode": "txt2img",  # the defaults: from the prompt alone, no adapter
        "adapter_id": None,
    }
    assert trusted.soft_binding is not None
    assert trusted.soft_binding["alg"] == "org.consentry.watermark.dwtdctsvd.v1"
    assert trusted.soft_binding["blocks"][0]["value"] == "0011223344556677"
    assert trusted.consent == {
        "subject_named": True,
        "consent_record_hash": GRANT_HASH,
        "hash_alg": "sha256",
        "purpose": "portrait",
        "verifier_scores": {"identity_similarity": 0.93, "other_identities_max": 0.12},
        "policy_version": "2026-11.1",
    }
    assert trusted.as_dict()["consent"] == trusted.consent


def test_another_ca_does_not_make_it_trusted(
    material: SigningMaterial, photo: Image.Image, tmp_path: Path
) -> None:
    signed = sign_image(_encode(photo, "JPEG"), "image/jpeg", _info(untrained=False), material)
    init_dev_keys(tmp_path)
    other = load_signing_material(tmp_path)
    report = read_manifest(signed, "image/jpeg", other.trust_anchor_pem)
    assert report.state == "Valid"
    assert any(e.startswith("signingCredential.untrusted") for e in report.validation_errors)
    assert report.generation is not None and report.generation["untrained"] is False


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_tampering_is_detected(material: SigningMaterial, photo: Image.Image, fmt: str, mime: str) -> None:
    signed = bytearray(sign_image(_encode(photo, fmt), mime, _info(), material))
    pixels = bytearray(signed)
    pixels[-200] ^= 0x01  # inside the compressed image data, covered by the hard binding
    report = read_manifest(bytes(pixels), mime, material.trust_anchor_pem)
    assert report.state == "Invalid"
    assert any(e.startswith("assertion.dataHash.mismatch") for e in report.validation_errors)

    claim = bytearray(signed)
    at = claim.find(b"portrait")  # the consent assertion's purpose, inside the manifest
    assert at > 0
    claim[at] ^= 0x01
    assert read_manifest(bytes(claim), mime, material.trust_anchor_pem).state == "Invalid"


def test_unsigned_image_has_no_manifest(photo: Image.Image) -> None:
    report = read_manifest(_encode(photo, "JPEG"), "image/jpeg", None)
    assert report.state is None and report.active_manifest is None and report.consent is None


def test_not_an_image_is_bad_input(faces_dir: Path) -> None:
    for data, mime in [
        (b"plain text, not a picture", "image/jpeg"),
        ((faces_dir / "invalid" / "corrupted.png").read_bytes(), "image/png"),
        (b"", "image/png"),
    ]:
        with pytest.raises(InvalidImageError) as info:
            read_manifest(data, mime, None)
        assert info.value.code == "image.invalid"
    with pytest.raises(BadInputError) as unsupported:
        read_manifest(b"%PDF-1.7", "application/pdf", None)
    assert unsupported.value.code == "c2pa.unsupported_format"
    with pytest.raises(BadInputError):
        # No signer on purpose: the MIME check refuses before one is needed.
        sign_image(b"GIF89a", "text/plain", _info(), None)  # type: ignore[arg-type]


def test_signer_failure_is_ours_and_keeps_its_cause(photo: Image.Image, material: SigningMaterial) -> None:
    class BrokenKms:
        cert_chain_pem = material.cert_chain_pem

        def sign(self, data: bytes) -> bytes:
            raise TimeoutError("kms unreachable")

    with pytest.raises(StageError) as info:
        sign_image(_encode(photo, "JPEG"), "image/jpeg", _info(), BrokenKms())
    assert info.value.code == "c2pa.sign_failed"
    assert isinstance(info.value.__cause__, TimeoutError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"consent_record_hash": "Jane Doe"},
        {"consent_record_hash": GRANT_HASH.upper()},
        {"watermark_payload_hex": "xyz"},
        {"claim_generator": "consentry"},
        {"verifier_scores": {f"dim{i}": 0.1 for i in range(128)}},
        {"verifier_scores": {"identity": float("nan")}},
    ],
)
def test_manifest_info_refuses_names_and_embeddings(overrides: dict[str, object]) -> None:
    with pytest.raises(BadInputError) as info:
        _info(**overrides)
    assert info.value.code == "manifest.info_invalid"


def test_a_generation_without_subject_names_no_consent_record(
    material: SigningMaterial, photo: Image.Image
) -> None:
    signed = sign_image(
        _encode(photo, "PNG"), "image/png", _info(consent_record_hash=None, purpose=None), material
    )
    consent = read_manifest(signed, "image/png", material.trust_anchor_pem).consent
    assert consent is not None and consent["subject_named"] is False
    assert "consent_record_hash" not in consent and consent["purpose"] is None
