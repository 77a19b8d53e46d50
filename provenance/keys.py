"""A development certificate authority and the ES256 signing material C2PA needs.

C2PA validators refuse self-signed signing certificates, so even a development deployment needs a
two-level chain: a root CA (the trust anchor a verifier is told about) and an end-entity signing
certificate it issues with the profile the C2PA trust model requires of a claim signer (critical
key usage with digitalSignature, a non-empty EKU without anyExtendedKeyUsage, not a CA, AKI/SKI).

The root CA's private key is used once, to issue the signing certificate, and is never written:
there is nothing left on disk that could mint another trusted certificate. Re-running with
``force`` makes a new CA and therefore a new trust anchor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError, ConflictError

CA_CERT_FILE = "ca.cert.pem"
CHAIN_FILE = "signing.chain.pem"
KEY_FILE = "signing.key.pem"

# id-kp-documentSigning (RFC 9336); C2PA accepts it, and emailProtection, for claim signers.
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")

CA_VALIDITY = timedelta(days=3650)
SIGNER_VALIDITY = timedelta(days=825)
# Backdate notBefore a little so a verifier whose clock is slightly behind still accepts the cert.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class DevKeys:
    """Where :func:`init_dev_keys` wrote the development PKI."""

    ca_cert: Path
    cert_chain: Path
    private_key: Path
    not_after: datetime


@dataclass(frozen=True, slots=True)
class SigningMaterial:
    """An ES256 claim signer: the PEM chain to embed and a way to sign with the private key.

    The key object stays inside this value (and out of its repr); a KMS or HSM-backed signer only
    has to offer the same ``cert_chain_pem`` and ``sign``.
    """

    cert_chain_pem: str
    trust_anchor_pem: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """ES256 over ``data`` as COSE wants it: raw r||s (32 bytes each), not DER."""
        der = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Consentry development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_root(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = _name("Consentry Development Root CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_signer(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name("Consentry Development Claim Signer"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + SIGNER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start (no window in which the key is world-readable), and
    # truncate an existing file only when the caller asked for force.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def init_dev_keys(keys_dir: Path, *, force: bool = False) -> DevKeys:
    """Create a development root CA and an ES256 claim-signing certificate under ``keys_dir``.

    Refuses (``keys.exist``) to replace existing material unless ``force``: replacing keys makes
    every image signed so far verify against a CA nobody trusts any more.
    """
    keys_dir = Path(keys_dir)
    paths = [keys_dir / CA_CERT_FILE, keys_dir / CHAIN_FILE, keys_dir / KEY_FILE]
    existing = [p.name for p in paths if p.exists()]
    if existing and not force:
        raise ConflictError(
            f"signing keys already exist in {keys_dir} ({', '.join(existing)}); pass --force to replace them",
            code=codes.KEYS_EXIST,
        )
    keys_dir.mkdir(parents=True, exist_ok=True)

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue_root(ca_key, now)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer_cert = _issue_signer(signer_key, ca_key, ca_cert, now)

    key_pem = signer_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(paths[2], key_pem)
    paths[0].write_bytes(_pem(ca_cert))
    # The chain C2PA embeds: end-entity first, then its issuer.
    paths[1].write_bytes(_pem(signer_cert) + _pem(ca_cert))
    return DevKeys(
        ca_cert=paths[0],
        cert_chain=paths[1],
        private_key=paths[2],
        not_after=signer_cert.not_valid_after_utc,
    )


def load_signing_material(keys_dir: Path) -> SigningMaterial:
    """Read the signing key, chain and trust anchor written by :func:`init_dev_keys` (or an
    operator's own files under the same names)."""
    keys_dir = Path(keys_dir)
    paths = {name: keys_dir / name for name in (CA_CERT_FILE, CHAIN_FILE, KEY_FILE)}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise ConfigurationError(
            f"signing keys missing in {keys_dir} ({', '.join(missing)}): run `consentry keys init`",
            code=codes.KEYS_MISSING,
        )
    try:
        key = serialization.load_pem_private_key(paths[KEY_FILE].read_bytes(), password=None)
        chain_pem = paths[CHAIN_FILE].read_text(encoding="ascii")
        anchor_pem = paths[CA_CERT_FILE].read_text(encoding="ascii")
        chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
        x509.load_pem_x509_certificates(anchor_pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"signing keys in {keys_dir} are unreadable: {exc}", code=codes.KEYS_INVALID
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigurationError("the signing key must be an EC P-256 key (ES256)", code=codes.KEYS_INVALID)
    leaf_key = chain[0].public_key()
    if (
        not isinstance(leaf_key, ec.EllipticCurvePublicKey)
        or leaf_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise ConfigurationError(
            f"{KEY_FILE} does not belong to the first certificate of {CHAIN_FILE}", code=codes.KEYS_INVALID
        )
    return SigningMaterial(cert_chain_pem=chain_pem, trust_anchor_pem=anchor_pem, key=key)
