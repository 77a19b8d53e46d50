"""Personalization through the Gate, with the package's fakes: adapter training bound to an
``adapter_training`` grant, its background job, using the adapter under the generation grant,
img2img references in the manifest, and every bad input with its stable code. Storage,
encryption, auditing, watermarking and signing are real (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from consentry.gateway.gate import Gate
from consentry.gateway.requests import (
    AdapterTrainingRequest,
    EnrollmentRequest,
    GenerationRequest,
    GrantRequest,
)
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.gateway.testing import FailingGenerator, FingerprintAnalyzer, PhotoGenerator, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.generation.base import GenerationMode
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConsentryError
from consentry.provenance.manifest import ManifestReport, read_manifest


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class World:
    gate: Gate
    generator: PhotoGenerator
    alice: str
    bob: str
    trainer: PrincipalView
    viewer: PrincipalView
    photos: dict[str, bytes]
    adapters_dir: Path

    async def consent(self, who: PrincipalView, *purposes: Purpose, photos: bool = False) -> str:
        terms = GrantRequest(
            identity_id=self.alice,
            principal=who.id,
            purposes=purposes,
            attested_by="test",
            consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
            use_enrollment_photos=photos,
        )
        return (await self.gate.grant(LOCAL_ACTOR, terms)).id

    def train(self, *photos: str, **params: Any) -> AdapterTrainingRequest:
        return AdapterTrainingRequest(
            identity_id=params.pop("identity", self.alice),
            photos=tuple(self.photos[p] for p in photos),
            **({"steps": 3} | params),
        )

    async def trained(self, *photos: str, **params: Any) -> str:
        started = await self.gate.train_adapter(self.trainer, self.train(*photos, **params))
        done = await self.gate.wait_adapter(self.trainer, started.id)
        assert done.status == "ready", done
        return done.id

    def ask(self, **how: Any) -> GenerationRequest:
        refs = tuple(self.photos[r] for r in how.pop("refs", ()))
        how = {"subject_id": self.alice, "purpose": Purpose.portrait} | how
        return GenerationRequest(prompt="a portrait", references=refs, **how)

    async def kinds(self) -> list[str]:
        return [e.kind async for e in self.gate.audit.events()]


@pytest.fixture
async def world(database_url: str, tmp_path: Path, dev_keys: Path) -> AsyncIterator[World]:
    analyzer = FingerprintAnalyzer()
    images = {}
    for n, who in enumerate(("alice", "bob", "stranger")):
        for k in range(4):
            images[f"{who}{k}"] = analyzer.register(synthetic_photo(100 * n + k), who)
    photos = {name: png(img) for name, img in images.items()}
    generator = PhotoGenerator(images["alice3"], step_s=0.01)
    settings = Settings(data_dir=tmp_path, database_url=database_url, keys_dir=dev_keys, device="cpu")
    gate = await open_gate(settings, analyzer=analyzer, generator=generator)
    alice = await gate.enroll(
        LOCAL_ACTOR,
        EnrollmentRequest(label="A", photos=tuple(photos[f"alice{k}"] for k in range(3)), keep_photos=True),
    )
    bob = await gate.enroll(
        LOCAL_ACTOR, EnrollmentRequest(label="B", photos=tuple(photos[f"bob{k}"] for k in range(3)))
    )
    trainer = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
    viewer = (await gate.create_principal(LOCAL_ACTOR, "Q", "requester")).principal
    yield World(gate, generator, alice.id, bob.id, trainer, viewer, photos, settings.adapters_dir)
    await gate.close()


def c2pa_of(data: bytes, mime: str) -> ManifestReport:
    return read_manifest(data, mime, None)


async def code_of(work: Any) -> tuple[str, int]:
    with pytest.raises(ConsentryError) as caught:
        await work
    return caught.value.code, caught.value.status


async def test_training_needs_the_adapter_training_grant_and_the_refusal_is_audited(world: World) -> None:
    assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice3"))) == (
        codes.CONSENT_MISSING,
        403,
    )
    await world.consent(world.trainer, Purpose.portrait)
    assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice3"))) == (
        codes.CONSENT_PURPOSE,
        403,
    )
    assert (await world.kinds()).count("adapter.training_refused") == 2
    assert await world.gate.list_adapters(LOCAL_ACTOR) == []


async def test_training_photos_must_each_be_the_subject(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    for photo, code in (("bob3", codes.FACE_PROTECTED), ("stranger3", codes.FACE_UNKNOWN)):
        assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice3", photo))) == (
            code,
            403,
        )
    assert await world.gate.list_adapters(LOCAL_ACTOR) == []
    assert world.generator.trained_on == []


async def test_enrollment_photos_are_used_only_when_the_grant_says_so(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    assert await code_of(world.gate.train_adapter(world.trainer, world.train())) == (
        codes.ADAPTER_PHOTOS_REQUIRED,
        400,
    )
    await world.consent(world.trainer, Purpose.adapter_training, photos=True)
    adapter = await world.trained()
    view = await world.gate.adapter(world.trainer, adapter)
    assert (view.photos_source, view.photos) == ("enrollment", 3)
    from consentry.gateway.testing import fingerprint

    enrolled = tuple(fingerprint(Image.open(io.BytesIO(world.photos[f"alice{k}"]))) for k in range(3))
    assert world.generator.trained_on[-1] == enrolled


async def test_an_adapter_is_used_only_under_a_grant_covering_the_request(world: World) -> None:
    await world.consent(world.trainer, Purpose.portrait, Purpose.adapter_training)
    adapter = await world.trained("alice3", "alice2")
    release = await world.gate.generate(world.trainer, world.ask(adapter=True))
    assert release.adapter_id == adapter
    job = world.generator.jobs[-1]
    assert job.adapter is not None and job.adapter.id == adapter
    assert job.adapter.weights.startswith(b"fake-lora:")  # decrypted in memory, exactly as trained
    manifest = c2pa_of(release.images[0], "image/png")
    assert manifest.generation is not None and manifest.generation["adapter_id"] == adapter
    # Another principal whose grant covers only avatars is refused at consent, audited; the
    # adapter's weights were never opened for it.
    await world.consent(world.viewer, Purpose.avatar)
    jobs = len(world.generator.jobs)
    assert await code_of(world.gate.generate(world.viewer, world.ask(adapter=True))) == (
        codes.CONSENT_PURPOSE,
        403,
    )
    assert len(world.generator.jobs) == jobs
    events = [e async for e in world.gate.audit.events() if e.kind.startswith("generation.")]
    assert [e.body["adapter_id"] for e in events] == [adapter, adapter]
    assert "adapter.trained" in await world.kinds()


async def test_revoking_the_training_grant_deletes_the_adapter(world: World) -> None:
    training = await world.consent(world.trainer, Purpose.adapter_training)
    await world.consent(world.trainer, Purpose.portrait)
    adapter = await world.trained("alice3")
    assert list(world.adapters_dir.glob(f"{adapter}*"))
    await world.gate.revoke(LOCAL_ACTOR, training)
    assert await world.gate.list_adapters(LOCAL_ACTOR) == []
    assert not list(world.adapters_dir.glob(f"{adapter}*"))
    assert await code_of(world.gate.generate(world.trainer, world.ask(adapter=True))) == (
        codes.ADAPTER_MISSING,
        409,
    )


async def test_a_second_training_while_one_runs_is_a_conflict(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    first = await world.gate.train_adapter(world.trainer, world.train("alice3", steps=40))
    assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice2"))) == (
        codes.ADAPTER_TRAINING_BUSY,
        409,
    )
    done = await world.gate.wait_adapter(world.trainer, first.id)
    assert done.status == "ready" and done.steps_done == 40


async def test_closing_the_gate_mid_training_leaves_no_adapter(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    started = await world.gate.train_adapter(world.trainer, world.train("alice3", steps=500))
    await asyncio.sleep(0.2)
    await world.gate.parts.training.close()
    view = await world.gate.adapter(LOCAL_ACTOR, started.id)
    assert (view.status, view.error_code) == ("failed", codes.ADAPTER_INTERRUPTED)
    assert not list(world.adapters_dir.glob("*.enc"))
    with pytest.raises(ConsentryError) as caught:
        await world.gate.parts.adapters.open_weights(started.id)
    assert caught.value.code == codes.ADAPTER_MISSING


@pytest.mark.parametrize(
    ("params", "code", "status"),
    [
        ({"steps": 0}, codes.ADAPTER_INVALID_PARAMS, 400),
        ({"rank": 1000}, codes.ADAPTER_INVALID_PARAMS, 400),
        ({"prior_images": -1}, codes.ADAPTER_INVALID_PARAMS, 400),
        ({"identity": "idn_nobody"}, codes.IDENTITY_NOT_FOUND, 404),
    ],
)
async def test_bad_training_requests_store_nothing(
    world: World, params: dict[str, Any], code: str, status: int
) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    before = await world.kinds()
    assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice3", **params))) == (
        code,
        status,
    )
    assert await world.kinds() == before
    assert await world.gate.list_adapters(LOCAL_ACTOR) == []


async def test_an_erased_identity_has_no_adapter_to_train_or_use(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training, Purpose.portrait)
    await world.trained("alice3")
    counts = await world.gate.erase(LOCAL_ACTOR, world.alice)
    assert counts["adapters_deleted"] == 1 and counts["photos_deleted"] == 3
    assert not list(world.adapters_dir.glob("*.enc"))
    assert await code_of(world.gate.train_adapter(world.trainer, world.train("alice3"))) == (
        codes.IDENTITY_ERASED,
        409,
    )
    assert await code_of(world.gate.generate(world.trainer, world.ask(adapter=True))) == (
        codes.IDENTITY_ERASED,
        409,
    )


async def test_a_requester_sees_only_its_own_adapters(world: World) -> None:
    await world.consent(world.trainer, Purpose.adapter_training)
    adapter = await world.trained("alice3")
    assert [v.id for v in await world.gate.list_adapters(world.trainer, world.alice)] == [adapter]
    assert await world.gate.list_adapters(world.viewer) == []
    assert await code_of(world.gate.adapter(world.viewer, adapter)) == (codes.ADAPTER_NOT_FOUND, 404)
    assert await code_of(world.gate.delete_adapter(world.trainer, adapter)) == (codes.AUTH_FORBIDDEN, 403)
    await world.gate.delete_adapter(LOCAL_ACTOR, adapter)
    assert await world.gate.list_adapters(LOCAL_ACTOR) == []


async def test_img2img_binds_its_reference_into_the_manifest_by_hash(world: World) -> None:
    await world.consent(world.trainer, Purpose.portrait)
    release = await world.gate.generate(
        world.trainer, world.ask(refs=("alice3", "alice2"), mode=GenerationMode.img2img, strength=0.5)
    )
    job = world.generator.jobs[-1]
    assert (job.mode, job.strength, len(job.references)) == (GenerationMode.img2img, 0.5, 2)
    manifest = c2pa_of(release.images[0], "image/png")
    assert "compositeWithTrainedAlgorithmicMedia" in (manifest.digital_source_type or "")
    # img2img starts from the first reference only: that one is the ingredient.
    assert [i["hash"] for i in manifest.ingredients] == [hashlib.sha256(world.photos["alice3"]).hexdigest()]
    plain = await world.gate.generate(world.trainer, world.ask(refs=("alice3",)))
    assert c2pa_of(plain.images[0], "image/png").ingredients == ()


async def test_a_reference_of_someone_else_is_refused_for_img2img(world: World) -> None:
    await world.consent(world.trainer, Purpose.portrait)
    jobs = len(world.generator.jobs)
    request = world.ask(refs=("bob3",), mode=GenerationMode.img2img)
    assert await code_of(world.gate.generate(world.trainer, request)) == (codes.FACE_PROTECTED, 403)
    assert len(world.generator.jobs) == jobs  # the photo never reached the generator


@pytest.mark.parametrize(
    ("how", "code"),
    [
        (
            {"mode": GenerationMode.img2img, "strength": 0.0, "refs": ("alice3",)},
            codes.GENERATION_STRENGTH_INVALID,
        ),
        (
            {"mode": GenerationMode.img2img, "strength": 1.01, "refs": ("alice3",)},
            codes.GENERATION_STRENGTH_INVALID,
        ),
        ({"mode": GenerationMode.img2img}, codes.GENERATION_REFERENCE_REQUIRED),
        ({"purpose": Purpose.adapter_training}, codes.INPUT_PURPOSE_INVALID),
        ({"adapter": True}, codes.ADAPTER_MISSING),
    ],
)
async def test_bad_generation_requests_are_answered_before_anything_is_audited(
    world: World, how: dict[str, Any], code: str
) -> None:
    await world.consent(world.trainer, Purpose.portrait)
    before = await world.kinds()
    status = 409 if code == codes.ADAPTER_MISSING else 400
    assert await code_of(world.gate.generate(world.trainer, world.ask(**how))) == (code, status)
    assert await world.kinds() == before


async def test_a_generator_without_modes_refuses_them_clearly(
    database_url: str, tmp_path: Path, dev_keys: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, keys_dir=dev_keys, device="cpu")
    gate = await open_gate(settings, analyzer=FingerprintAnalyzer(), generator=FailingGenerator())
    try:
        requester = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
        request = GenerationRequest(
            prompt="a lake", mode=GenerationMode.ip_adapter, references=(png(synthetic_photo(5)),)
        )
        assert await code_of(gate.generate(requester, request)) == (codes.GENERATION_MODE_UNAVAILABLE, 400)
        no_subject = GenerationRequest(prompt="a lake", adapter=True)
        assert await code_of(gate.generate(requester, no_subject)) == (codes.ADAPTER_MISSING, 400)
    finally:
        await gate.close()
