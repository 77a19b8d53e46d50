"""The provenance verifier: only this deployment's key makes a mark that resolves to a record,
and every report says what it proves and what it does not."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from consentry.detectors.images import decode_image, sniff_mime
from consentry.policies.errors import ConfigurationError
from consentry.provenance.keys import init_dev_keys, load_signing_material
from consentry.provenance.manifest import ManifestInfo, sign_image
from consentry.provenance.verification import (
    ProvenanceReport,
    ProvenanceVerifier,
    RecordLookup,
    load_trust_anchors,
)
from consentry.provenance.watermark import ALGORITHM, Watermarker
from consentry.provenance.watermark_keys import WatermarkKeyring

PAYLOAD = bytes.fromhex("5eed0000c0ffee01")
RECORD_ID = "gen_0001"
OLD_PUBLIC_DEFAULT_KEY = b"consentry.watermark.v2"  # was in the source: anyone could use it


@dataclass(frozen=True, slots=True)
class StoredRecord:
    id: str
    watermark: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "watermark": self.watermark}


class InMemoryRecords:
    """A real :class:`RecordLookup`: records by watermark payload, and what was asked."""

    def __init__(self, *records: StoredRecord) -> None:
        self._by_watermark = {r.watermark: r for r in records}
        self.asked: list[str] = []

    async def by_watermark(self, watermark_hex: str) -> StoredRecord | None:
        self.asked.append(watermark_hex)
        return self._by_watermark.get(watermark_hex)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _stripped_jpeg(image: Image.Image) -> bytes:
    """What a platform keeps: the pixels alone, re-encoded, no C2PA or other metadata."""
    buf = io.BytesIO()
    Image.frombytes("RGB", image.size, image.convert("RGB").tobytes()).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


async def _verify(verifier: ProvenanceVerifier, data: bytes) -> ProvenanceReport:
    image = decode_image(data, max_bytes=10_000_000, max_pixels=10_000_000)
    return await verifier.verify(data, image, sniff_mime(data))


@pytest.fixture(scope="module")
def photo(faces_dir: Path) -> Image.Image:
    im = Image.open(faces_dir / "groups" / "000_5.jpg").convert("RGB")
    side = min(im.size)
    return im.crop((0, 0, side, side)).resize((256, 256), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Watermarker:
    return Watermarker(WatermarkKeyring.load_or_create(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="module")
def released(deployment: Watermarker, photo: Image.Image) -> Image.Image:
    return deployment.embed_verified(photo, PAYLOAD)


@pytest.fixture
def records() -> InMemoryRecords:
    return InMemoryRecords(StoredRecord(RECORD_ID, PAYLOAD.hex()))


def test_the_in_memory_lookup_is_a_record_lookup(records: InMemoryRecords) -> None:
    lookup: RecordLookup = records  # what the verifier is typed against
    assert lookup is records


@pytest.mark.parametrize("forger_key", [b"another deployment's key", OLD_PUBLIC_DEFAULT_KEY])
async def test_a_payload_stamped_with_another_key_does_not_resolve(
    deployment: Watermarker,
    released: Image.Image,
    photo: Image.Image,
    records: InMemoryRecords,
    forger_key: bytes,
) -> None:
    forger = Watermarker.with_key(forger_key)
    forged = forger.embed_verified(photo, PAYLOAD)  # a real record's payload, on an image we never released
    assert forger.decode(forged).payload == PAYLOAD  # the mark is there, under the forger's key

    verifier = ProvenanceVerifier(deployment, records, None)
    report = await _verify(verifier, _png(forged))
    assert not report.watermark.found and report.watermark.payload is None and report.watermark.key_id is None
    assert report.record is None and not report.provenance_found
    assert records.asked == []  # nothing to look up: the mark does not decode under our keys
    assert report.assessment.basis == "none" and report.assessment.proves == ()

    # The same payload marked with the deployment's key resolves to the record.
    genuine = await _verify(verifier, _png(released))
    assert genuine.watermark.found and genuine.watermark.payload == PAYLOAD.hex()
    assert genuine.watermark.key_id == deployment.current_key_id
    assert genuine.record == {"id": RECORD_ID, "watermark": PAYLOAD.hex()} and genuine.provenance_found
    assert records.asked == [PAYLOAD.hex()]


async def test_a_stripped_copy_says_what_the_watermark_does_and_does_not_prove(
    deployment: Watermarker, released: Image.Image, records: InMemoryRecords
) -> None:
    report = await _verify(ProvenanceVerifier(deployment, records, None), _stripped_jpeg(released))
    assert report.c2pa["state"] is None and report.record is not None
    a = report.assessment
    assert a.basis == "watermark" and a.conflicts == ()
    proves, not_proven = " ".join(a.proves), " ".join(a.does_not_prove)
    assert (
        deployment.current_key_id in proves and RECORD_ID in proves and "released by this gateway" in proves
    )
    assert f"{deployment.false_positive_bound():.1e}" in proves
    assert "pixels are unchanged" in not_proven and "who holds" in not_proven
    assert "copied onto another image" in not_proven


async def test_a_marked_image_naming_no_record_does_not_claim_a_release(
    deployment: Watermarker, released: Image.Image
) -> None:
    report = await _verify(ProvenanceVerifier(deployment, InMemoryRecords(), None), _png(released))
    assert report.watermark.found and report.record is None and not report.provenance_found
    assert report.assessment.basis == "watermark"
    assert not any("released by this gateway" in s for s in report.assessment.proves)
    assert any(
        PAYLOAD.hex() in s and "names no generation record" in s for s in report.assessment.does_not_prove
    )


def _info(payload_hex: str) -> ManifestInfo:
    return ManifestInfo(
        title="out.png",
        claim_generator="consentry/0.1.0",
        record_id=RECORD_ID,
        model="tiny",
        untrained=True,
        watermark_algorithm=ALGORITHM,
        watermark_payload_hex=payload_hex,
        consent_record_hash=hashlib.sha256(b"grant").hexdigest(),
        purpose="portrait",
    )


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_dir = tmp_path_factory.mktemp("signing")
    init_dev_keys(keys_dir)
    return keys_dir


async def test_a_signed_release_binds_its_bytes_and_a_trusted_signer(
    deployment: Watermarker, released: Image.Image, records: InMemoryRecords, signing_keys: Path
) -> None:
    signed = sign_image(
        _png(released), "image/png", _info(PAYLOAD.hex()), load_signing_material(signing_keys)
    )
    anchors = load_trust_anchors(None, signing_keys, trust_dev_ca=True)

    trusted = await _verify(ProvenanceVerifier(deployment, records, anchors), signed)
    assert trusted.c2pa["state"] == "Trusted" and trusted.record is not None
    a = trusted.assessment
    assert a.basis == "c2pa" and a.conflicts == ()
    assert any("exact bytes" in s for s in a.proves) and any("trust anchor" in s for s in a.proves)
    assert not any("pixels are unchanged" in s for s in a.does_not_prove)  # the bytes are bound

    untrusted = await _verify(ProvenanceVerifier(deployment, records, None), signed)
    assert untrusted.c2pa["state"] == "Valid" and untrusted.assessment.basis == "c2pa"
    assert any("who signed" in s for s in untrusted.assessment.does_not_prove)
    assert not any("trust anchor configured here" in s for s in untrusted.assessment.proves)


async def test_a_manifest_that_disagrees_with_the_mark_is_a_conflict(
    deployment: Watermarker, released: Image.Image, records: InMemoryRecords, signing_keys: Path
) -> None:
    # A signed claim for another payload on an image that carries ours.
    signed = sign_image(_png(released), "image/png", _info("00" * 8), load_signing_material(signing_keys))
    report = await _verify(ProvenanceVerifier(deployment, records, None), signed)
    assert report.c2pa["state"] == "Valid" and report.watermark.found
    assert any("0000000000000000" in c and PAYLOAD.hex() in c for c in report.assessment.conflicts)


async def test_the_report_keeps_the_old_keys_and_adds_key_id_and_assessment(
    deployment: Watermarker, released: Image.Image, records: InMemoryRecords
) -> None:
    report = (await _verify(ProvenanceVerifier(deployment, records, None), _png(released))).as_dict()
    assert set(report) == {"c2pa", "watermark", "record", "provenance_found", "assessment"}
    assert set(report["watermark"]) == {"found", "payload", "confidence", "key_id"}
    assert set(report["assessment"]) == {"basis", "proves", "does_not_prove", "conflicts"}
    assert 0.8 <= report["watermark"]["confidence"] <= 1.0
    assert json.loads(json.dumps(report)) == report  # plain JSON all the way down


async def test_a_format_without_c2pa_support_simply_has_no_manifest(
    deployment: Watermarker, released: Image.Image, records: InMemoryRecords
) -> None:
    buf = io.BytesIO()
    released.save(buf, format="BMP")
    report = await _verify(ProvenanceVerifier(deployment, records, None), buf.getvalue())
    assert report.c2pa["state"] is None and "cannot carry a C2PA manifest" in report.c2pa["note"]
    assert report.record is not None  # the mark is in the pixels, whatever the container


def test_trust_anchors(tmp_path: Path, signing_keys: Path) -> None:
    assert load_trust_anchors(None, None, trust_dev_ca=True) is None
    assert load_trust_anchors(None, tmp_path / "no-keys", trust_dev_ca=True) is None  # no dev CA yet
    dev = load_trust_anchors(None, signing_keys, trust_dev_ca=True)
    assert dev is not None and dev.count("BEGIN CERTIFICATE") == 1
    assert load_trust_anchors(None, signing_keys, trust_dev_ca=False) is None
    extra = tmp_path / "anchors.pem"
    extra.write_text(dev)
    both = load_trust_anchors(extra, signing_keys, trust_dev_ca=True)
    assert both is not None and both.count("BEGIN CERTIFICATE") == 2
    with pytest.raises(ConfigurationError) as info:
        load_trust_anchors(tmp_path / "missing.pem", None, trust_dev_ca=False)
    assert info.value.code == "config.trust_anchors"


def test_verification_needs_neither_the_gateway_nor_the_detectors() -> None:
    code = (
        "import sys, consentry.provenance.verification\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('consentry.gateway', 'consentry.detectors')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
