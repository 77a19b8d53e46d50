"""The content step of the generate flow (``verify_content``) on SQLite and PostgreSQL: every
branch of the explicit-output policy with the package's fakes (a fingerprint classifier marks a
photo explicit), classifier faults, no classifier configured, warm-up, and the real open_nsfw
model refusing the shared photo it scores highest at a threshold set for the test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from PIL import Image

from consentry.detectors.content import ContentClassifier, OpenNsfwClassifier
from consentry.gateway.flow import STAGES, VERIFY_CONTENT
from consentry.gateway.gate import Gate, Release
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.gateway.testing import (
    FailingClassifier,
    FingerprintAnalyzer,
    FingerprintClassifier,
    PhotoGenerator,
    synthetic_photo,
)
from consentry.gateway.wiring import open_gate
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError, ConsentryError, RefusedError, StageError
from consentry.provenance.manifest import read_manifest

ALICE, STRANGER, NOBODY = "alice", "stranger", "nobody"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def policy_text(
    explicit: str = "refuse", classifier: str = "opennsfw", extra: str = "", threshold: float = 0.8
) -> str:
    return (
        f'version = "content-test"\n[content]\nclassifier = "{classifier}"\nthreshold = {threshold}\n'
        f'explicit_without_likeness = "{explicit}"\n{extra}'
    )


@dataclass
class World:
    gate: Gate
    alice: str
    p: PrincipalView
    drawn: Image.Image

    def ask(self, *, subject: bool = True, purpose: Purpose = Purpose.portrait) -> GenerationRequest:
        subject_id = self.alice if subject else None
        return GenerationRequest(subject_id=subject_id, purpose=purpose, prompt="a portrait")

    async def last_event(self) -> tuple[str, str]:
        events = [(e.kind, e.body.get("decision", "")) async for e in self.gate.audit.events()]
        return events[-1]

    async def refused(self, req: GenerationRequest) -> ConsentryError:
        with pytest.raises((RefusedError, StageError)) as info:
            await self.gate.generate(self.p, req)
        assert await self.last_event() == ("generation.refused", info.value.code), "refusal not audited"
        assert not list(self.gate.settings.output_dir.glob("*.png")), "an image left"
        return info.value


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(database_url: str, tmp_path: Path, dev_keys: Path) -> AsyncIterator[Build]:
    """A gate on fakes. ``drawn`` names who the generated photo shows (``nobody``: no face);
    ``explicit`` marks it explicit for the fingerprint classifier; ``classifier`` replaces that
    classifier (``policy``: none injected, the policy's own runs); ``policy`` is the policy
    file's text."""
    gates: list[Gate] = []

    async def make(
        *,
        drawn: str = ALICE,
        explicit: bool = True,
        classifier: ContentClassifier | Literal["fake", "policy"] = "fake",
        policy: str | None = None,
        photo: Image.Image | None = None,
        **overrides: Any,  # Settings fields
    ) -> World:
        analyzer = FingerprintAnalyzer()
        enroll = [analyzer.register(synthetic_photo(k), ALICE) for k in range(3)]
        output = photo or synthetic_photo(50)
        if drawn != NOBODY:
            analyzer.register(output, drawn)
        fake = FingerprintClassifier()
        if explicit:
            fake.mark(output, 0.97)
        policy_file = tmp_path / "policy.toml"
        policy_file.write_text(policy or policy_text())
        settings = Settings(
            data_dir=tmp_path,
            database_url=database_url,
            keys_dir=dev_keys,
            device="cpu",
            policy_file=policy_file,
            **overrides,
        )
        injected: ContentClassifier | None = fake
        if not isinstance(classifier, str):
            injected = classifier
        elif classifier == "policy":
            injected = None
        gate = await open_gate(
            settings, analyzer=analyzer, generator=PhotoGenerator(output), content_classifier=injected
        )
        gates.append(gate)
        alice = await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="A", photos=tuple(map(png, enroll))))
        p = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
        await gate.grant(
            LOCAL_ACTOR,
            GrantRequest(
                identity_id=alice.id,
                principal=p.id,
                purposes=(Purpose.portrait, Purpose.marketing),
                attested_by="test",
                consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
            ),
        )
        return World(gate, alice.id, p, output)

    yield make
    for gate in gates:
        await gate.close()


@pytest.mark.parametrize("explicit_setting", ["refuse", "allow"])
async def test_explicit_output_showing_the_enrolled_subject_is_always_refused(
    build: Build, explicit_setting: str
) -> None:
    world = await build(drawn=ALICE, policy=policy_text(explicit_setting))
    error = await world.refused(world.ask())
    assert error.code == codes.OUTPUT_EXPLICIT_WITH_LIKENESS and error.status == 403
    stages = error.extra["stages"]
    assert list(stages)[-1] == VERIFY_CONTENT and stages["verify_output"]["allowed"]
    assert stages[VERIFY_CONTENT]["scores"] == {"explicit_max": 0.97, "enrolled_likeness": 1.0}


@pytest.mark.parametrize("explicit_setting", ["refuse", "allow"])
@pytest.mark.parametrize(("drawn", "subject"), [(STRANGER, False), (NOBODY, False), (NOBODY, True)])
async def test_explicit_output_without_an_enrolled_likeness_follows_the_deployment(
    build: Build, drawn: str, subject: bool, explicit_setting: str
) -> None:
    world = await build(drawn=drawn, policy=policy_text(explicit_setting))
    if explicit_setting == "refuse":
        error = await world.refused(world.ask(subject=subject))
        assert error.code == codes.OUTPUT_EXPLICIT
        assert error.extra["stages"][VERIFY_CONTENT]["scores"]["enrolled_likeness"] == 0.0
        return
    release: Release = await world.gate.generate(world.p, world.ask(subject=subject))
    content = release.decision.verdicts[VERIFY_CONTENT]
    assert content.allowed and content.scores["explicit_max"] == 0.97
    assert list(release.decision.verdicts) == list(STAGES)


async def test_a_purpose_can_refuse_explicit_output_the_deployment_allows(build: Build) -> None:
    policy = policy_text("allow", extra="[purposes.marketing]\nrefuse_explicit = true\n")
    world = await build(drawn=NOBODY, policy=policy)
    assert (await world.refused(world.ask(purpose=Purpose.marketing))).code == codes.OUTPUT_EXPLICIT
    assert (await world.gate.generate(world.p, world.ask(purpose=Purpose.portrait))).decision.allowed


async def test_output_that_is_not_explicit_is_released_with_its_score_in_the_manifest(build: Build) -> None:
    world = await build(drawn=ALICE, explicit=False)
    release: Release = await world.gate.generate(world.p, world.ask())
    content = release.decision.verdicts[VERIFY_CONTENT]
    assert content.allowed and content.scores == {"explicit_max": 0.0, "enrolled_likeness": 1.0}
    report = read_manifest(release.images[0], "image/png", None)
    assert report.consent is not None
    scores = report.consent["verifier_scores"]
    assert scores["explicit_max"] == 0.0 and scores["subject_min"] > 0.99


async def test_a_failing_classifier_refuses_as_a_fault(build: Build) -> None:
    world = await build(classifier=FailingClassifier(RuntimeError("onnxruntime: bad alloc")))
    error = await world.refused(world.ask())
    assert error.code == codes.STAGE_ERROR and error.status == 503
    verdict = error.extra["stages"][VERIFY_CONTENT]
    assert verdict["fault"] and "onnxruntime: bad alloc" in verdict["reason"]


async def test_a_missing_model_refuses_requests_and_stops_the_gateway_at_warm_up(
    build: Build, tmp_path: Path
) -> None:
    world = await build(classifier=OpenNsfwClassifier(tmp_path / "absent.onnx"))
    error = await world.refused(world.ask())
    assert error.code == codes.STAGE_ERROR
    assert codes.MODEL_WEIGHTS_MISSING in error.extra["stages"][VERIFY_CONTENT]["reason"]
    with pytest.raises(ConfigurationError) as caught:
        await world.gate.warm()
    assert caught.value.code == codes.MODEL_WEIGHTS_MISSING
    assert not (await world.gate.readiness()).ready


async def test_no_classifier_configured_allows_and_says_so(build: Build) -> None:
    world = await build(classifier="policy", policy=policy_text(classifier="none"))
    release: Release = await world.gate.generate(world.p, world.ask())
    content = release.decision.verdicts[VERIFY_CONTENT]
    assert content.allowed and content.reason == "no content classifier is configured"
    assert list(release.decision.verdicts) == list(STAGES)


def drawable(photo: Image.Image) -> Image.Image:
    if min(photo.size) >= 256:
        return photo
    return photo.resize((photo.width * 2, photo.height * 2), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def top_photo(faces_dir: Path) -> tuple[Image.Image, float, float]:
    """The shared photo open_nsfw scores highest, its score, and the runner-up's score. Photos are
    scored as the generator will draw them: LFW's 250x250 at twice the size (the watermark needs
    256 px)."""
    paths = sorted(p for d in ("lfw", "groups") for p in (faces_dir / d).rglob("*.jpg"))
    photos = [drawable(Image.open(p).convert("RGB")) for p in paths]
    scores = OpenNsfwClassifier().explicit_scores(photos)
    ranked = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    return photos[ranked[0]], scores[ranked[0]], scores[ranked[1]]


@pytest.mark.parametrize(
    ("drawn", "threshold", "code"),
    [
        (ALICE, "test", codes.OUTPUT_EXPLICIT_WITH_LIKENESS),
        (NOBODY, "test", codes.OUTPUT_EXPLICIT),
        (ALICE, "shipped", codes.RELEASED),
    ],
)
async def test_the_real_model_refuses_the_shared_photo_it_scores_highest(
    build: Build, top_photo: tuple[Image.Image, float, float], drawn: str, threshold: str, code: str
) -> None:
    """open_nsfw itself (the policy's classifier, nothing injected) on the shared photo it scores
    highest, drawn by the generator as the subject's likeness or as nobody's: at a threshold
    between that photo's score and the runner-up's it is refused; at the shipped one released."""
    photo, top, runner_up = top_photo
    level = (top + runner_up) / 2 if threshold == "test" else 0.8
    world = await build(
        drawn=drawn, explicit=False, classifier="policy", policy=policy_text(threshold=level), photo=photo
    )
    if code == codes.RELEASED:
        release: Release = await world.gate.generate(world.p, world.ask())
        content = release.decision.verdicts[VERIFY_CONTENT]
        assert content.scores["explicit_max"] == pytest.approx(top, abs=1e-5)
        return
    error = await world.refused(world.ask())
    assert error.code == code
    assert error.extra["stages"][VERIFY_CONTENT]["scores"]["explicit_max"] == pytest.approx(top, abs=1e-5)
