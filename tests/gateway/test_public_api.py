"""Public verification through HTTP without a key, on SQLite and PostgreSQL: the C2PA Soft Binding
Resolution API resolves a stripped copy of a released image (metadata gone, re-encoded as JPEG)
to its record and its signed manifest store; once the subject revokes the grant or is erased,
every answer becomes a tombstone that names no one; a record made without a subject is never
tombstoned. Releases are real (watermarking, signing, storage, audit) with the package's fakes
for faces and pictures (gateway/testing.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import c2pa
import httpx
import pytest
from PIL import Image

from consentry.gateway.gate import Gate, Release
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.generation.base import GenerationMode
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.provenance.keys import load_signing_material
from consentry.provenance.manifest import read_manifest
from consentry.provenance.manifest_store import png_manifest_store
from consentry.provenance.watermark import ALGORITHM
from tests.gateway.conftest import AppClient, serve

LABEL = "Alice Example-7f3a"
_NO_NETWORK = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def stripped_jpeg(released_png: bytes) -> bytes:
    """The pixels alone, re-encoded as JPEG 75: no C2PA, no EXIF, no XMP travel along."""
    img = Image.open(io.BytesIO(released_png)).convert("RGB")
    buf = io.BytesIO()
    Image.frombytes("RGB", img.size, img.tobytes()).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def read_store(store: bytes, anchors: str) -> dict:
    """A manifest store on its own, as a C2PA tool that trusts ``anchors`` reads what
    /v1/manifests returns."""
    with c2pa.Context.from_dict(_NO_NETWORK | {"trust": {"trust_anchors": anchors}}) as context:
        reader = c2pa.Reader.try_create("application/c2pa", io.BytesIO(store), None, context)
        assert reader is not None
        with reader:
            return json.loads(reader.json())


@dataclass
class World:
    client: AppClient
    gate: Gate
    generator: PhotoGenerator
    alice: str
    requester: PrincipalView
    photos: dict[str, bytes]
    alice_photo: Image.Image
    nobody: Image.Image
    grants: list[str] = field(default_factory=list)

    async def consent(self) -> str:
        terms = GrantRequest(
            identity_id=self.alice,
            principal=self.requester.id,
            purposes=(Purpose.portrait,),
            attested_by="test",
            consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
        )
        grant = (await self.gate.grant(LOCAL_ACTOR, terms)).id
        self.grants.append(grant)
        return grant

    async def release_of_alice(self, **how: object) -> Release:
        self.generator.photo = self.alice_photo
        req = GenerationRequest(prompt="a portrait", subject_id=self.alice, purpose=Purpose.portrait, **how)  # type: ignore[arg-type]
        return await self.gate.generate(self.requester, req)

    async def release_of_nobody(self) -> Release:
        # No subject named: the output must show no enrolled face, so the fake draws a stranger.
        self.generator.photo = self.nobody
        return await self.gate.generate(self.requester, GenerationRequest(prompt="a landscape"))


def public_settings(tmp_path: Path, database_url: str, dev_keys: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        keys_dir=dev_keys,
        device="cpu",
        public_rate_burst=1000,
        public_deployment_name="Test Deployment",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def world(database_url: str, tmp_path: Path, dev_keys: Path) -> AsyncIterator[World]:
    analyzer = FingerprintAnalyzer()
    images = {f"alice{k}": analyzer.register(synthetic_photo(k), "alice") for k in range(4)}
    photos = {name: png(img) for name, img in images.items()}
    nobody = synthetic_photo(999)  # registered as no one: shows no enrolled face
    generator = PhotoGenerator(images["alice3"])

    async def factory(s: Settings) -> Gate:
        return await open_gate(s, analyzer=analyzer, generator=generator)

    settings = public_settings(tmp_path, database_url, dev_keys)
    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    async with serve(app) as client:
        gate: Gate = client.app.state["consentry_gate"]
        alice = await gate.enroll(
            LOCAL_ACTOR, EnrollmentRequest(label=LABEL, photos=tuple(photos[f"alice{k}"] for k in range(3)))
        )
        requester = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
        yield World(client, gate, generator, alice.id, requester, photos, images["alice3"], nobody)


def secrets_of(world: World, release: Release) -> list[str]:
    """Everything that names or describes the subject: none of it may be in a tombstone."""
    found = [world.alice, LABEL, world.requester.id]
    for grant in world.grants:
        found += [grant, hashlib.sha256(grant.encode()).hexdigest()]
    # Reference photos are bound into the manifest by SHA-256.
    found += [hashlib.sha256(data).hexdigest() for data in world.photos.values()]
    return found


def assert_names_no_one(responses: list[httpx.Response], secrets: list[str]) -> None:
    for r in responses:
        for secret in secrets:
            assert secret.encode() not in r.content, (r.request.url, secret)
        assert b"adp_" not in r.content


async def public_answers(client: AppClient, release: Release, stripped: bytes) -> list[httpx.Response]:
    """Every public route's answer about one release, asked without a key."""
    payload = bytes.fromhex(release.watermark)
    return [
        await client.get("/v1/matches/byBinding", params={"alg": ALGORITHM, "value": release.watermark}),
        await client.get(
            "/v1/matches/byBinding", params={"alg": ALGORITHM, "value": base64.b64encode(payload).decode()}
        ),
        await client.post("/v1/matches/byBinding", json={"alg": ALGORITHM, "value": release.watermark}),
        await client.post("/v1/matches/byContent", content=stripped, headers={"Content-Type": "image/jpeg"}),
        await client.get(f"/v1/manifests/{release.record_id}_0"),
        await client.post("/v1/public/verify", content=stripped, headers={"Content-Type": "image/jpeg"}),
        # The original file, manifest and all, checked publicly.
        await client.post(
            "/v1/public/verify", content=release.images[0], headers={"Content-Type": "image/png"}
        ),
    ]


async def test_supported_algorithms_name_what_the_manifest_binds(world: World) -> None:
    await world.consent()
    release = await world.release_of_alice()
    r = await world.client.get("/v1/services/supportedAlgorithms")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.json() == {"watermarks": [{"alg": ALGORITHM}], "fingerprints": []}
    binding = read_manifest(release.images[0], "image/png", None).soft_binding
    assert binding is not None and binding["alg"] == ALGORITHM
    assert binding["blocks"][0]["value"] == release.watermark


async def test_a_stripped_copy_resolves_to_its_record_and_manifest(world: World, dev_keys: Path) -> None:
    await world.consent()
    release = await world.release_of_alice()
    stripped = stripped_jpeg(release.images[0])
    assert png_manifest_store(stripped) is None and b"c2pa" not in stripped
    answers = await public_answers(world.client, release, stripped)
    by_hex, by_b64, by_post, by_content, manifest, check, original = answers
    expected = [{"manifestId": f"{release.record_id}_0", "status": "available"}]
    for r in (by_hex, by_b64, by_post):
        assert r.status_code == 200 and r.json() == {"matches": expected}, r.text
    assert by_content.status_code == 200, by_content.text
    [match] = by_content.json()["matches"]
    assert match["manifestId"] == f"{release.record_id}_0" and match["status"] == "available"
    assert 50 <= match["similarityScore"] <= 100

    # The manifest store signed into the released file, byte for byte, as application/c2pa.
    assert manifest.status_code == 200 and manifest.headers["content-type"] == "application/c2pa"
    assert manifest.content == png_manifest_store(release.images[0])
    assert manifest.headers["cache-control"] == "no-store"
    store = read_store(manifest.content, load_signing_material(dev_keys).trust_anchor_pem)
    [_active_label] = store["manifests"]  # one manifest: returnActiveManifest gives the same store
    active = store["manifests"][store["active_manifest"]]
    assertions = {a["label"]: a["data"] for a in active["assertions"]}
    assert assertions["c2pa.soft-binding"]["blocks"][0]["value"] == release.watermark
    assert assertions["org.consentry.generation"]["record_id"] == release.record_id
    # Detached from its asset only the hard binding cannot be checked; the signature holds.
    failures = store["validation_results"]["activeManifest"]["failure"]
    assert {f["code"] for f in failures} == {"assertion.dataHash.mismatch"}, failures
    again = await world.client.get(
        f"/v1/manifests/{release.record_id}_0", params={"returnActiveManifest": "true"}
    )
    assert again.content == manifest.content

    body = check.json()
    assert check.status_code == 200 and body["deployment"] == "Test Deployment"
    assert body["c2pa"]["state"] is None and body["watermark"]["found"]
    assert body["watermark"]["payload"] == release.watermark and body["watermark"]["alg"] == ALGORITHM
    assert body["record"]["id"] == release.record_id and body["record"]["status"] == "available"
    assert body["record"]["subject_named"] is True and body["tombstone"] is None
    assert body["assessment"]["basis"] == "watermark"
    checked = original.json()
    assert checked["c2pa"]["state"] == "Trusted" and checked["c2pa"]["record_id"] == release.record_id
    assert (
        checked["c2pa"]["claimed_watermark"] == release.watermark and checked["assessment"]["conflicts"] == []
    )
    # Before any withdrawal the manifest does carry the consent hash: the tombstone tests below
    # check its absence from bytes that would otherwise contain it.
    assert hashlib.sha256(world.grants[0].encode()).hexdigest().encode() in manifest.content


async def test_after_revocation_every_answer_is_a_tombstone_that_names_no_one(world: World) -> None:
    grant = await world.consent()
    release = await world.release_of_alice(mode=GenerationMode.img2img, references=(world.photos["alice1"],))
    # The signed manifest binds the reference photo by hash: a secret the tombstone must not leak.
    store = png_manifest_store(release.images[0])
    assert store is not None and hashlib.sha256(world.photos["alice1"]).hexdigest().encode() in store
    await world.gate.revoke(LOCAL_ACTOR, grant)

    stripped = stripped_jpeg(release.images[0])
    answers = await public_answers(world.client, release, stripped)
    by_hex, by_b64, by_post, by_content, manifest, check, original = answers
    for r in (by_hex, by_b64, by_post, by_content):
        assert r.status_code == 200 and [m["status"] for m in r.json()["matches"]] == ["revoked"], r.text
    assert manifest.status_code == 410 and manifest.headers["content-type"] == "application/problem+json"
    problem = manifest.json()
    assert problem["code"] == "public.consent_revoked"
    tomb = problem["tombstone"]
    assert tomb["status"] == "revoked" and tomb["recordId"] == release.record_id
    assert datetime.fromisoformat(tomb["releasedAt"]).tzinfo is not None
    assert (
        tomb["releasedUnderConsent"] and tomb["consentWithdrawn"] and tomb["deployment"] == "Test Deployment"
    )
    assert set(tomb) == {
        "manifestId", "recordId", "status", "releasedAt", "releasedUnderConsent", "consentWithdrawn",
        "deployment", "statement",
    }  # fmt: skip
    for r in (check, original):
        body = r.json()
        assert body["tombstone"]["status"] == "revoked" and body["record"]["status"] == "revoked"
    assert_names_no_one(answers, secrets_of(world, release))


async def test_after_erasure_every_answer_is_an_erased_tombstone(world: World) -> None:
    await world.consent()
    release = await world.release_of_alice()
    await world.gate.erase(LOCAL_ACTOR, world.alice)
    answers = await public_answers(world.client, release, stripped_jpeg(release.images[0]))
    by_hex, _, _, by_content, manifest, check, _ = answers
    assert [m["status"] for m in by_hex.json()["matches"]] == ["erased"]
    assert [m["status"] for m in by_content.json()["matches"]] == ["erased"]
    assert manifest.status_code == 410 and manifest.json()["code"] == "public.subject_erased"
    assert manifest.json()["tombstone"]["status"] == "erased"
    assert check.json()["tombstone"]["status"] == "erased"
    assert_names_no_one(answers, secrets_of(world, release))


async def test_a_record_without_a_subject_is_never_tombstoned(world: World) -> None:
    grant = await world.consent()
    unnamed = await world.release_of_nobody()
    await world.gate.revoke(LOCAL_ACTOR, grant)
    await world.gate.erase(LOCAL_ACTOR, world.alice)
    r = await world.client.get("/v1/matches/byBinding", params={"alg": ALGORITHM, "value": unnamed.watermark})
    assert r.json() == {"matches": [{"manifestId": f"{unnamed.record_id}_0", "status": "available"}]}
    manifest = await world.client.get(f"/v1/manifests/{unnamed.record_id}_0")
    assert manifest.status_code == 200 and manifest.content == png_manifest_store(unnamed.images[0])
    check = await world.client.post("/v1/public/verify", content=stripped_jpeg(unnamed.images[0]))
    body = check.json()
    assert body["record"] == {**body["record"], "subject_named": False, "status": "available"}
    assert body["tombstone"] is None


async def test_several_images_are_several_manifests(world: World) -> None:
    await world.consent()
    release = await world.release_of_alice(num_images=2)
    r = await world.client.get("/v1/matches/byBinding", params={"alg": ALGORITHM, "value": release.watermark})
    ids = [m["manifestId"] for m in r.json()["matches"]]
    assert ids == [f"{release.record_id}_0", f"{release.record_id}_1"]
    one = await world.client.get(
        "/v1/matches/byBinding", params={"alg": ALGORITHM, "value": release.watermark, "maxResults": 1}
    )
    assert [m["manifestId"] for m in one.json()["matches"]] == ids[:1]
    for n, image in enumerate(release.images):
        manifest = await world.client.get(f"/v1/manifests/{release.record_id}_{n}")
        assert manifest.content == png_manifest_store(image)
    gone = await world.client.get(f"/v1/manifests/{release.record_id}_2")
    assert gone.status_code == 404 and gone.json()["code"] == "public.manifest_not_found"


async def test_a_released_file_no_longer_kept_is_said_so(world: World) -> None:
    await world.consent()
    release = await world.release_of_alice()
    release.paths[0].unlink()
    r = await world.client.get(f"/v1/manifests/{release.record_id}_0")
    assert r.status_code == 404 and r.json()["code"] == "public.manifest_missing"
