"""Upstream mode through the gate: the configured generator is an HTTP service in its own process
(``tests/upstream_server.py``). A normal prompt is released (watermarked, signed, audited); an
upstream that is down, slow, failing or answering garbage is refused as a fault and audited with
its code, nothing written; an upstream that returns an enrolled person's photo is refused by the
output check. The face model is the real one, the person a real LFW photo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.gateway.gate import Gate
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.gateway.wiring import open_gate
from consentry.generation.base import Generator
from consentry.policies import codes
from consentry.policies.config import GeneratorKind, Settings
from consentry.policies.errors import ConsentryError, RefusedError, StageError
from tests.upstream_server import Upstream, refused_port, running_upstream

pytestmark = pytest.mark.slow  # a server process with a model, real face models: ~30 s

PERSON = "Colin_Powell"
SLOW_S = 4.0


def lfw(faces: Path, n: int) -> Path:
    return faces / "lfw" / PERSON / f"{PERSON}_{n:04d}.jpg"


@pytest.fixture(scope="module")
def upstream(
    tiny_model: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upstream]:
    # [face] answers with a photo of the enrolled person that enrollment did not use.
    workdir = tmp_path_factory.mktemp("upstream-server")
    with running_upstream(tiny_model, workdir, face=lfw(faces_dir, 4), slow_s=SLOW_S) as server:
        yield server


Open = Callable[..., Awaitable[tuple[Gate, PrincipalView]]]


@pytest.fixture
async def open_upstream_gate(
    tmp_path: Path,
    dev_keys: Path,
    faces_dir: Path,
    shared_models: tuple[FaceAnalyzer, Generator],
    upstream: Upstream,
) -> AsyncIterator[Open]:
    """A gate whose generator the settings build (only the face analyzer is injected), with
    one LFW person enrolled and a requester ``P``."""
    analyzer, _ = shared_models
    gates: list[Gate] = []

    async def make(kind: str = "openai", **overrides: Any) -> tuple[Gate, PrincipalView]:
        url = upstream.openai_url if kind == "openai" else upstream.url
        fields: dict[str, Any] = {"upstream_url": url, "upstream_untrained": True, **overrides}
        settings = Settings(
            data_dir=tmp_path, keys_dir=dev_keys, device="cpu", generator=GeneratorKind(kind), **fields
        )
        gate = await open_gate(settings, analyzer=analyzer)
        gates.append(gate)
        photos = tuple(lfw(faces_dir, n).read_bytes() for n in (1, 2, 3))
        await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label=PERSON, photos=photos))
        requester = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).principal
        return gate, requester

    yield make
    for gate in gates:
        await gate.close()


async def last_event(gate: Gate) -> tuple[str, str]:
    events = [e async for e in gate.audit.events()]
    return events[-1].kind, events[-1].body.get("decision", "")


def written(gate: Gate) -> list[Path]:
    out = gate.settings.output_dir
    return [p for p in out.rglob("*") if p.is_file()] if out.exists() else []


async def refused(gate: Gate, who: PrincipalView, prompt: str) -> ConsentryError:
    with pytest.raises((RefusedError, StageError)) as info:
        await gate.generate(who, GenerationRequest(prompt=prompt))
    assert await last_event(gate) == ("generation.refused", info.value.code), "refusal not audited"
    assert not written(gate), "a refused generation left a file"
    return info.value


@pytest.mark.parametrize("kind", ["openai", "a1111"])
async def test_a_normal_prompt_is_released_watermarked_signed_and_audited(
    open_upstream_gate: Open, upstream: Upstream, kind: str
) -> None:
    gate, requester = await open_upstream_gate(kind)
    prompt = f"a lighthouse at dusk ({kind})"
    release = await gate.generate(requester, GenerationRequest(prompt=prompt))
    assert release.decision.code == codes.RELEASED
    # The upstream's image went through the content step like a local one (real open_nsfw).
    assert release.decision.verdicts["verify_content"].scores["explicit_max"] < 0.8
    port = upstream.url.rsplit(":", 1)[1]
    assert release.model == (
        f"openai:default@127.0.0.1:{port}" if kind == "openai" else f"a1111@127.0.0.1:{port}"
    )
    assert release.untrained is True
    assert [p.read_bytes() for p in release.paths] == list(release.images)
    assert all(p.parent == gate.settings.output_dir for p in release.paths)
    assert await last_event(gate) == ("generation.released", codes.RELEASED)
    [seen] = upstream.attempts(prompt)
    assert seen["params"]["width"] == seen["params"]["height"] == gate.settings.image_size

    auditor = (await gate.create_principal(LOCAL_ACTOR, "aud", "auditor")).principal
    report = await gate.verify_provenance(auditor, release.images[0])
    assert report.c2pa["state"] == "Trusted"
    assert report.watermark.found and report.watermark.payload == release.watermark
    assert report.record is not None and report.record["id"] == release.record_id
    assert (await gate.audit.verify()).ok


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("down", codes.UPSTREAM_UNAVAILABLE),
        ("[slow]", codes.UPSTREAM_TIMEOUT),
        ("[500]", codes.UPSTREAM_ERROR),
        ("[garbage]", codes.UPSTREAM_BAD_RESPONSE),
    ],
)
async def test_upstream_failures_are_refused_as_audited_faults(
    open_upstream_gate: Open, case: str, code: str
) -> None:
    with refused_port() as port:
        overrides: dict[str, Any] = {"upstream_timeout_s": 1.0}
        if case == "down":
            overrides["upstream_url"] = f"http://127.0.0.1:{port}/v1"
        gate, requester = await open_upstream_gate("openai", **overrides)
        error = await refused(gate, requester, f"{case} a quiet harbour")
    assert isinstance(error, StageError) and (error.code, error.status) == (code, 503)
    generate = error.extra["stages"]["generate"]
    assert generate["fault"] is True and generate["code"] == code
    if case == "[slow]":
        assert generate["elapsed_ms"] < (SLOW_S - 1) * 1000, "the timeout did not cut the wait"


async def test_a1111_failure_is_refused_as_a_fault(open_upstream_gate: Open) -> None:
    gate, requester = await open_upstream_gate("a1111")
    error = await refused(gate, requester, "[500] a quiet harbour")
    assert (error.code, error.status) == (codes.UPSTREAM_ERROR, 503)


@pytest.mark.parametrize("kind", ["openai", "a1111"])
async def test_an_upstream_image_of_an_enrolled_person_is_refused(
    open_upstream_gate: Open, kind: str
) -> None:
    gate, requester = await open_upstream_gate(kind)
    error = await refused(gate, requester, "[face] a portrait of a statesman")
    assert isinstance(error, RefusedError)
    assert (error.code, error.status) == (codes.OUTPUT_PROTECTED, 403)
    assert list(error.extra["stages"])[-1] == "verify_output"


async def test_an_upstream_generator_without_a_url_refuses_as_a_fault(open_upstream_gate: Open) -> None:
    gate, requester = await open_upstream_gate("a1111", upstream_url=None)
    error = await refused(gate, requester, "a quiet harbour")
    assert (error.code, error.status) == (codes.CONFIG_UPSTREAM_URL, 503)
