"""The generate flow with the package's own fakes: every refusal code, faults, timeouts, and the
race for a grant's last use. Storage, watermarking, signing and auditing are real; only the face
and diffusion models are fakes (real implementations of the same Protocols).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from consentry.gateway.flow import STAGES, Stages
from consentry.gateway.gate import Gate, Release
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.stages import WatermarkStage
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.gateway.testing import (
    FailingCheck,
    FailingGenerator,
    FingerprintAnalyzer,
    PhotoGenerator,
    WordsEmbedder,
    synthetic_photo,
)
from consentry.gateway.wiring import open_gate
from consentry.generation.base import GenerationJob, GenerationOutput, Generator
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import BadInputError, ConsentryError, RefusedError, StageError
from consentry.provenance.watermark import Watermarker
from consentry.provenance.watermark_keys import WatermarkKeyring

ALICE, BOB, STRANGER = "alice", "bob", "stranger"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class World:
    gate: Gate
    analyzer: FingerprintAnalyzer
    alice: str
    bob: str
    p: PrincipalView
    q: PrincipalView
    grant_id: str
    photos: dict[str, Image.Image]

    def ask(self, prompt: str = "a portrait", *, refs: tuple[str, ...] = ()) -> GenerationRequest:
        return GenerationRequest(
            subject_id=self.alice,
            purpose=Purpose.portrait,
            prompt=prompt,
            references=tuple(png(self.photos[r]) for r in refs),
        )

    async def events(self) -> list[tuple[str, str]]:
        return [(e.kind, e.body.get("decision", "")) async for e in self.gate.audit.events()]


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def build(database_url: str, tmp_path: Path, dev_keys: Path) -> AsyncIterator[Build]:
    """Opens a gate on fakes; ``output`` names whose photo ``generator`` is given to draw."""
    gates: list[Gate] = []

    async def make(
        *,
        output: str | None = ALICE,
        generator: Callable[[Image.Image], Generator] = PhotoGenerator,
        adjust: Callable[[Stages], Stages] | None = None,
        max_uses: int | None = None,
        prompt_embedder: WordsEmbedder | None = None,
        **overrides: Any,  # Settings fields
    ) -> World:
        analyzer = FingerprintAnalyzer()
        photos: dict[str, Image.Image] = {}
        for n, who in enumerate((ALICE, BOB, STRANGER)):
            for k in range(4):
                photos[f"{who}{k}"] = analyzer.register(synthetic_photo(100 * n + k), who)
        photos["nobody"] = synthetic_photo(999)  # registered as showing no face
        photos["group"] = analyzer.register(synthetic_photo(998), ALICE, BOB)
        drawn = photos[f"{output}3"] if output else photos["nobody"]
        settings = Settings(
            data_dir=tmp_path, database_url=database_url, keys_dir=dev_keys, device="cpu", **overrides
        )
        gate = await open_gate(
            settings,
            analyzer=analyzer,
            generator=generator(drawn),
            adjust_stages=adjust,
            prompt_embedder=prompt_embedder,
        )
        gates.append(gate)
        alice = await gate.enroll(
            LOCAL_ACTOR,
            EnrollmentRequest(label="A", photos=tuple(png(photos[f"alice{k}"]) for k in range(3))),
        )
        bob = await gate.enroll(
            LOCAL_ACTOR, EnrollmentRequest(label="B", photos=tuple(png(photos[f"bob{k}"]) for k in range(3)))
        )
        p = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
        q = (await gate.create_principal(LOCAL_ACTOR, "Q", "requester")).principal
        grant = await gate.grant(
            LOCAL_ACTOR,
            GrantRequest(
                identity_id=alice.id,
                principal=p.id,
                purposes=(Purpose.portrait,),
                attested_by="test",
                consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
                deny_terms=("uniform",),
                max_uses=max_uses,
            ),
        )
        return World(gate, analyzer, alice.id, bob.id, p, q, grant.id, photos)

    yield make
    for gate in gates:
        await gate.close()


async def refused(world: World, req: GenerationRequest, who: PrincipalView | None = None) -> ConsentryError:
    with pytest.raises((RefusedError, StageError)) as info:
        await world.gate.generate(who or world.p, req)
    assert (await world.events())[-1] == ("generation.refused", info.value.code), "refusal not audited"
    return info.value


async def test_release_runs_every_stage_in_order(build: Build) -> None:
    world = await build()
    release: Release = await world.gate.generate(world.p, world.ask(refs=("alice3",)))
    assert list(release.decision.verdicts) == list(STAGES)
    assert release.decision.code == codes.RELEASED
    assert release.decision.verdicts["verify_output"].scores["subject_min"] > 0.99
    assert release.paths[0].read_bytes() == release.images[0]
    assert (await world.events())[-1] == ("generation.released", codes.RELEASED)
    record = await world.gate.records.by_watermark(release.watermark)
    assert record is not None and record.id == release.record_id


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no grant", codes.CONSENT_MISSING),
        ("wrong purpose", codes.CONSENT_PURPOSE),
        ("deployment deny term", codes.CONSENT_PROMPT_DENIED),
        ("grant deny term", codes.CONSENT_PROMPT_DENIED),
        ("reference without a face", codes.FACE_NONE),
        ("reference of a stranger", codes.FACE_UNKNOWN),
        ("reference of another enrolled person", codes.FACE_PROTECTED),
        ("group reference", codes.FACE_PROTECTED),
    ],
)
async def test_request_refusals(build: Build, case: str, code: str) -> None:
    world = await build()
    req, who = world.ask(), world.p
    if case == "no grant":
        who = world.q
    elif case == "wrong purpose":
        req = dataclasses.replace(req, purpose=Purpose.marketing)
    elif case == "deployment deny term":
        req = dataclasses.replace(req, prompt="nude portrait")
    elif case == "grant deny term":
        req = dataclasses.replace(req, prompt="in uniform")
    else:
        ref = {"reference without a face": "nobody", "reference of a stranger": "stranger0"}.get(case)
        ref = ref or ("bob3" if "another" in case else "group")
        req = world.ask(refs=(ref,))
    error = await refused(world, req, who)
    assert error.code == code and error.status == 403
    assert not list((world.gate.settings.output_dir).glob("*.png")), "an image left"


@pytest.mark.parametrize(
    ("drawn", "code"), [(BOB, codes.OUTPUT_PROTECTED), (STRANGER, codes.OUTPUT_MISMATCH)]
)
async def test_output_refusals(build: Build, drawn: str, code: str) -> None:
    world = await build(output=drawn)
    error = await refused(world, world.ask())
    assert error.code == code
    assert list(error.extra["stages"])[-1] == "verify_output"


async def test_output_without_face_is_refused_when_a_face_is_required(build: Build) -> None:
    world = await build(output=None, require_output_face=True)
    assert (await refused(world, world.ask())).code == codes.OUTPUT_MISMATCH


async def test_grant_lifecycle_refusals(build: Build) -> None:
    world = await build(max_uses=1)
    await world.gate.generate(world.p, world.ask())
    assert (await refused(world, world.ask())).code == codes.CONSENT_EXHAUSTED
    await world.gate.revoke(LOCAL_ACTOR, world.grant_id)
    assert (await refused(world, world.ask())).code == codes.CONSENT_REVOKED
    await world.gate.erase(LOCAL_ACTOR, world.alice)
    assert (await refused(world, world.ask())).code == codes.CONSENT_SUBJECT_INACTIVE


async def test_expired_grant(build: Build) -> None:
    world = await build()
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    await world.gate.grant(
        LOCAL_ACTOR,
        GrantRequest(
            identity_id=world.alice,
            principal=world.q.id,
            purposes=(Purpose.portrait,),
            attested_by="t",
            consent_text_sha256="0" * 64,
            expires_at=soon,
        ),
    )
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert (await refused(world, world.ask(), world.q)).code == codes.CONSENT_EXPIRED


class BarrierGenerator(PhotoGenerator):
    """Holds each request in the generator until ``parties`` requests are there: both are then
    past the consent check and race for the grant's last use at release."""

    def __init__(self, photo: Image.Image, parties: int) -> None:
        super().__init__(photo)
        self.barrier = threading.Barrier(parties, timeout=10)

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self.barrier.wait()
        return super().generate(job)


async def test_concurrent_exhaustion_is_refused_as_exhausted(build: Build) -> None:
    world = await build(
        max_uses=1, generator=lambda photo: BarrierGenerator(photo, 2), generation_concurrency=2
    )
    results = await asyncio.gather(
        world.gate.generate(world.p, world.ask()),
        world.gate.generate(world.p, world.ask()),
        return_exceptions=True,
    )
    released = [r for r in results if isinstance(r, Release)]
    errors = [r for r in results if isinstance(r, ConsentryError)]
    assert len(released) == 1 and len(errors) == 1, results
    assert errors[0].code == codes.CONSENT_EXHAUSTED and errors[0].status == 403
    assert errors[0].extra["stages"]["release"]["code"] == codes.CONSENT_EXHAUSTED
    decisions = sorted(d for kind, d in await world.events() if kind.startswith("generation."))
    assert decisions == [codes.CONSENT_EXHAUSTED, codes.RELEASED]
    assert len(list(world.gate.settings.output_dir.glob("*.png"))) == 1
    assert (await world.gate.audit.verify()).ok


async def test_generator_crash_is_a_fault(build: Build) -> None:
    world = await build(generator=lambda _: FailingGenerator(RuntimeError("CUDA error: device-side assert")))
    error = await refused(world, world.ask())
    assert (error.code, error.status) == (codes.STAGE_ERROR, 503)
    assert error.extra["stages"]["generate"]["fault"] is True


async def test_hanging_check_times_out(build: Build) -> None:
    world = await build(
        adjust=lambda s: dataclasses.replace(s, outputs=FailingCheck(hang_s=5.0)), stage_timeout_s=0.2
    )
    error = await refused(world, world.ask())
    assert (error.code, error.status) == (codes.STAGE_TIMEOUT, 503)
    assert error.extra["stages"]["verify_output"]["elapsed_ms"] < 1000


async def test_failing_check_is_a_fault(build: Build) -> None:
    world = await build(adjust=lambda s: dataclasses.replace(s, references=FailingCheck(ValueError("boom"))))
    assert (await refused(world, world.ask())).code == codes.STAGE_ERROR


async def test_undecodable_watermark_is_a_fault(build: Build, dev_keys: Path) -> None:
    faint = Watermarker(WatermarkKeyring.load(dev_keys), strengths=(0.01,))
    world = await build(adjust=lambda s: dataclasses.replace(s, watermark=WatermarkStage(faint, attempts=1)))
    error = await refused(world, world.ask())
    assert (error.code, error.status) == (codes.WATERMARK_FAILED, 503)


async def test_bad_parameters_are_answered_before_anything_is_audited(build: Build) -> None:
    world = await build()
    before = await world.events()
    with pytest.raises(BadInputError) as info:
        await world.gate.generate(world.p, dataclasses.replace(world.ask(), prompt="x" * 5000))
    assert info.value.code == "generation.invalid_params"
    assert await world.events() == before


# -- traffic that names no subject ----------------------------------------------------------------


def unnamed(prompt: str = "a landscape", refs: tuple[bytes, ...] = ()) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, references=refs)


async def test_unnamed_request_is_released_without_a_grant(build: Build) -> None:
    world = await build(output=STRANGER)  # a face of nobody enrolled: allowed by default
    release = await world.gate.generate(world.q, unnamed(refs=(png(world.photos["stranger1"]),)))
    assert release.decision.verdicts["consent"].reason.startswith("no subject named")
    record = await world.gate.records.by_watermark(release.watermark)
    assert record is not None and record.identity_id is None and record.grant_id is None
    last = [e async for e in world.gate.audit.events()][-1]
    assert last.kind == "generation.released" and last.body["identity_id"] is None


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("deployment deny term", codes.CONSENT_PROMPT_DENIED),
        ("reference of an enrolled person", codes.FACE_PROTECTED),
        ("output of an enrolled person", codes.OUTPUT_PROTECTED),
        ("unknown output face, deployment refuses them", codes.OUTPUT_UNKNOWN_FACE),
    ],
)
async def test_unnamed_request_refusals(build: Build, case: str, code: str) -> None:
    output = {"output of an enrolled person": BOB, "unknown output face, deployment refuses them": STRANGER}
    settings = {"unknown_output_faces": "refuse"} if "refuses" in case else {}
    world = await build(output=output.get(case), **settings)
    req = unnamed()
    if case == "deployment deny term":
        req = unnamed("a nude figure")
    elif case == "reference of an enrolled person":
        req = unnamed(refs=(png(world.photos["alice3"]),))
    error = await refused(world, req, world.q)
    assert error.code == code and error.status == 403


async def test_subject_without_purpose_is_bad_input(build: Build) -> None:
    world = await build()
    with pytest.raises(BadInputError) as info:
        await world.gate.generate(world.p, dataclasses.replace(world.ask(), purpose=None))
    assert info.value.code == "input.purpose_required"


# -- admission control ------------------------------------------------------------------------------


class HeldGenerator(PhotoGenerator):
    """Holds every request inside the generator until the test lets go."""

    def __init__(self, photo: Image.Image) -> None:
        super().__init__(photo)
        self.entered = threading.Semaphore(0)
        self.go = threading.Event()

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self.entered.release()
        assert self.go.wait(10), "the test never let the generator go"
        return super().generate(job)


def held_generators(into: list[HeldGenerator]) -> Callable[[Image.Image], HeldGenerator]:
    """A generator factory for ``build`` that keeps what it made, so the test can let go."""

    def make(photo: Image.Image) -> HeldGenerator:
        into.append(HeldGenerator(photo))
        return into[-1]

    return make


async def test_a_full_queue_refuses_at_once_with_gate_busy(build: Build) -> None:
    held: list[HeldGenerator] = []
    make = held_generators(held)
    world = await build(generator=make, generation_concurrency=1, queue_depth=1, queue_wait_s=30)
    first = asyncio.create_task(world.gate.generate(world.p, world.ask()))
    await asyncio.to_thread(held[0].entered.acquire, True, 10)  # the first is in the generator
    second = asyncio.create_task(world.gate.generate(world.p, world.ask()))  # waits in the queue
    await asyncio.sleep(0.05)
    with pytest.raises(ConsentryError) as busy:
        # Answered while the first request still holds the only slot (and would for up to
        # queue_wait_s = 30 s): the refusal did not wait for a slot.
        await asyncio.wait_for(world.gate.generate(world.p, world.ask()), 10)
    assert not held[0].go.is_set() and not first.done()
    assert (busy.value.code, busy.value.status) == (codes.GATE_BUSY, 503)
    assert busy.value.extra["retry_after"] >= 1
    assert (await world.events())[-1] == ("generation.refused", codes.GATE_BUSY)
    held[0].go.set()
    assert isinstance(await first, Release) and isinstance(await second, Release)


async def test_a_queued_request_that_waits_too_long_is_busy_not_a_late_timeout(build: Build) -> None:
    held: list[HeldGenerator] = []
    make = held_generators(held)
    world = await build(generator=make, generation_concurrency=1, queue_depth=4, queue_wait_s=0.2)
    first = asyncio.create_task(world.gate.generate(world.p, world.ask()))
    await asyncio.to_thread(held[0].entered.acquire, True, 10)
    with pytest.raises(ConsentryError) as busy:
        await world.gate.generate(world.p, world.ask())
    assert busy.value.code == codes.GATE_BUSY
    held[0].go.set()
    await first


async def test_the_policy_file_decides_and_its_version_is_recorded(build: Build, tmp_path: Path) -> None:
    from consentry.provenance.manifest import read_manifest

    policy = tmp_path / "policy.toml"
    policy.write_text(
        'version = "site-7"\n[prompt]\ndeny_terms = ["gore"]\n[purposes.portrait]\ndeny_terms = ["tattoo"]\n'
    )
    world = await build(policy_file=policy)
    for prompt in ("gore at night", "a tattoo"):  # the deployment's term, then the purpose's
        assert (await refused(world, world.ask(prompt))).code == codes.CONSENT_PROMPT_DENIED
    release = await world.gate.generate(world.p, world.ask("nude portrait"))  # not in this policy
    bodies = [e.body async for e in world.gate.audit.events()]
    assert bodies and all(b["policy_version"] == "site-7" for b in bodies)
    report = read_manifest(release.images[0], "image/png", None)
    assert report.consent is not None and report.consent["policy_version"] == "site-7"


async def test_a_broken_policy_file_stops_the_gate_before_it_opens(build: Build, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "x"\n[content]\nthreshold = 7\n')
    with pytest.raises(ConsentryError) as caught:
        await build(policy_file=policy)
    assert caught.value.code == codes.POLICY_INVALID
    assert not (tmp_path / "consentry.db").exists(), "nothing is written for a bad policy"


MEANING_POLICY = """version = "meaning-1"
[prompt]
deny_terms = ["gore"]
semantic = true
semantic_threshold = 0.6
[[prompt.categories]]
name = "graphic_violence"
examples = ["blood everywhere open wounds"]
"""


@pytest.mark.parametrize("named", [True, False], ids=["subject", "no subject"])
async def test_a_prompt_close_to_a_deny_category_is_refused_with_the_category_named(
    build: Build, tmp_path: Path, named: bool
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(MEANING_POLICY)
    world = await build(policy_file=policy, prompt_embedder=WordsEmbedder())

    def ask(prompt: str) -> GenerationRequest:
        req = world.ask(prompt)
        return req if named else dataclasses.replace(req, subject_id=None, purpose=None)

    error = await refused(world, ask("her portrait, open wounds and blood everywhere"))
    assert error.code == codes.CONSENT_PROMPT_DENIED and "'graphic_violence'" in error.detail
    [body] = [e.body async for e in world.gate.audit.events() if e.kind == "generation.refused"]
    consent = body["stages"]["consent"]
    assert "'graphic_violence'" in consent["reason"] and consent["scores"]["similarity"] >= 0.6
    assert body["policy_version"] == "meaning-1"
    # The keyword rule still comes first, and a prompt far from every category is released.
    error = await refused(world, ask("gore, open wounds and blood everywhere"))
    assert "denied terms: gore" in error.detail
    if named:  # (the build's generator draws Alice: a request naming nobody would be refused)
        release = await world.gate.generate(world.p, ask("a portrait in a sunny garden"))
        assert release.decision.code == codes.RELEASED


async def test_a_semantic_rule_that_cannot_load_refuses_every_request(build: Build, tmp_path: Path) -> None:
    class BrokenEmbedder(WordsEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("model file unreadable")

    policy = tmp_path / "policy.toml"
    policy.write_text(MEANING_POLICY)
    world = await build(policy_file=policy, prompt_embedder=BrokenEmbedder())
    error = await refused(world, world.ask("a portrait in a sunny garden"))
    assert isinstance(error, StageError) and error.code == codes.STAGE_ERROR


async def test_a_policy_that_reserves_a_purpose_for_liveness_stops_older_grants(
    build: Build, tmp_path: Path
) -> None:
    """The grant was recorded for an operator-attested subject; once the policy reserves its
    purpose for self-enrolled subjects, the next request is refused and audited as such."""
    world = await build()
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "strict"\n[enrollment]\nrequire_liveness_for = ["portrait"]\n')
    settings = world.gate.settings.model_copy(update={"policy_file": policy})
    drawn = PhotoGenerator(world.photos["alice3"])
    gate = await open_gate(settings, analyzer=world.analyzer, generator=drawn)
    try:
        with pytest.raises(RefusedError) as caught:
            await gate.generate(world.p, world.ask())
        assert caught.value.code == codes.CONSENT_LIVENESS_REQUIRED
        last = [e async for e in gate.audit.events()][-1]
        assert (last.kind, last.body["decision"]) == ("generation.refused", codes.CONSENT_LIVENESS_REQUIRED)
    finally:
        await gate.close()
