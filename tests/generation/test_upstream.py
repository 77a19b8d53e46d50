"""Upstream mode against a real HTTP service in its own process (``tests/upstream_server.py``,
running the tiny diffusers pipeline): both API shapes release images, the job reaches the
upstream, every failure is a StageError with its code, retries are bounded, connections pooled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from consentry.gateway.wiring import build_generator
from consentry.generation.base import GenerationJob, Generator
from consentry.generation.tiny import build_tiny_pipeline
from consentry.generation.upstream import UpstreamA1111, UpstreamOpenAIImages
from consentry.policies import codes
from consentry.policies.config import GeneratorKind, Settings
from consentry.policies.errors import ConfigurationError, StageError
from tests.upstream_server import Upstream, refused_port, running_upstream

SLOW_S = 4.0
"""How long the server sleeps on ``[slow]``; the clients here time out after 1 s."""

slow = pytest.mark.slow  # the tests that start the server process (model load: ~10 s, once)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    model = build_tiny_pipeline(tmp_path_factory.mktemp("upstream-model") / "tiny")
    with running_upstream(model, tmp_path_factory.mktemp("upstream-server"), slow_s=SLOW_S) as server:
        yield server


def unique(prompt: str) -> str:
    """Prompts are how the server's log tells requests apart: one per test."""
    return f"{prompt} #{uuid.uuid4().hex[:8]}"


def job(prompt: str, **overrides: Any) -> GenerationJob:
    params: dict[str, Any] = {"seed": 7, "steps": 1, "width": 256, "height": 256, "guidance_scale": 5.0}
    params.update(overrides)
    return GenerationJob(prompt=prompt, **params)


def port_of(upstream: Upstream) -> str:
    return upstream.url.rsplit(":", 1)[1]


Backend = type[UpstreamOpenAIImages] | type[UpstreamA1111]


def make(upstream: Upstream, backend: Backend, **kwargs: Any) -> UpstreamOpenAIImages | UpstreamA1111:
    url = upstream.openai_url if backend is UpstreamOpenAIImages else upstream.url
    return backend(url, **kwargs)


# -- releases: the job reaches the upstream, its images come back ---------------------------------


@slow
def test_openai_generations(upstream: Upstream) -> None:
    prompt = unique("a lighthouse")
    with UpstreamOpenAIImages(upstream.openai_url, api_key="sk-test", model="tiny", untrained=True) as gen:
        assert isinstance(gen, Generator)
        out = gen.generate(job(prompt, steps=2, width=256, height=320, num_images=2))
    assert [(im.mode, im.size) for im in out.images] == [("RGB", (256, 320))] * 2
    assert out.model == gen.name == f"openai:tiny@127.0.0.1:{port_of(upstream)}"
    assert out.untrained is True and (out.seed, out.steps) == (7, 2)
    [seen] = upstream.attempts(prompt)
    assert seen["path"] == "/v1/images/generations"
    assert seen["authorization"] == "Bearer sk-test"
    expected = {"prompt": prompt, "n": 2, "size": "256x320", "response_format": "b64_json", "model": "tiny"}
    assert {k: seen["params"][k] for k in expected} == expected


@slow
def test_openai_edits_send_the_references_as_png_files(upstream: Upstream) -> None:
    prompt = unique("a portrait")
    refs = (Image.new("RGB", (64, 48), "red"), Image.new("L", (80, 80), 128))
    with UpstreamOpenAIImages(upstream.openai_url) as gen:
        out = gen.generate(job(prompt, references=refs))
    assert len(out.images) == 1 and out.untrained is False
    assert out.model == f"openai:default@127.0.0.1:{port_of(upstream)}"
    [seen] = upstream.attempts(prompt)
    assert seen["path"] == "/v1/images/edits"
    assert seen["references"] == [[64, 48], [80, 80]]
    assert seen["authorization"] is None and "model" not in seen["params"]
    assert (seen["params"]["size"], seen["params"]["n"]) == ("256x256", 1)


@slow
def test_a1111_txt2img_sends_every_job_parameter(upstream: Upstream) -> None:
    prompt = unique("a harbour")
    params = {"negative_prompt": "blurry", "steps": 2, "width": 320, "height": 256, "guidance_scale": 6.5}
    with UpstreamA1111(upstream.url) as gen:
        out = gen.generate(job(prompt, seed=11, **params))
        again = gen.generate(job(prompt, seed=11, **params))
        other = gen.generate(job(prompt, seed=12, **params))
    assert out.images[0].size == (320, 256) and out.model == f"a1111@127.0.0.1:{port_of(upstream)}"
    first, *_ = upstream.attempts(prompt)
    assert first["path"] == "/sdapi/v1/txt2img"
    sent = {k: first["params"][k] for k in ("prompt", "negative_prompt", "seed", "steps", "width", "height")}
    assert sent == {
        "prompt": prompt,
        "negative_prompt": "blurry",
        "seed": 11,
        "steps": 2,
        "width": 320,
        "height": 256,
    }
    assert (first["params"]["batch_size"], first["params"]["cfg_scale"]) == (1, 6.5)
    # The seed is what the upstream generated with: same seed, same pixels; another seed, others.
    assert out.images[0].tobytes() == again.images[0].tobytes() != other.images[0].tobytes()


@slow
def test_a1111_img2img_starts_from_the_first_reference(upstream: Upstream) -> None:
    prompt = unique("a garden")
    refs = (Image.new("RGB", (72, 64), "blue"), Image.new("RGB", (40, 40), "green"))
    with UpstreamA1111(upstream.url) as gen:
        out = gen.generate(job(prompt, references=refs, num_images=2))
    assert len(out.images) == 2
    [seen] = upstream.attempts(prompt)
    assert seen["path"] == "/sdapi/v1/img2img" and seen["references"] == [[72, 64]]
    assert seen["params"]["batch_size"] == 2


# -- failures: each is a StageError with its code, and only the right ones are retried ------------


@slow
@pytest.mark.parametrize("backend", [UpstreamOpenAIImages, UpstreamA1111])
@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("[500]", codes.UPSTREAM_ERROR),
        ("[garbage]", codes.UPSTREAM_BAD_RESPONSE),
        ("[extra]", codes.UPSTREAM_BAD_RESPONSE),
        ("[html]", codes.UPSTREAM_BAD_RESPONSE),
        ("[noimages]", codes.UPSTREAM_BAD_RESPONSE),
        ("[slow]", codes.UPSTREAM_TIMEOUT),
    ],
)
def test_failures_have_codes_and_are_not_retried(
    upstream: Upstream, backend: Backend, marker: str, code: str
) -> None:
    prompt = unique(f"{marker} a field")
    # Only [slow] has to beat the timeout: the others may take a (2-core) generation's time.
    with make(upstream, backend, timeout_s=1.0 if marker == "[slow]" else 60.0, retries=2) as gen:
        started = time.monotonic()
        with pytest.raises(StageError) as info:
            gen.generate(job(prompt))
        elapsed = time.monotonic() - started
    assert (info.value.code, info.value.status) == (code, 503), info.value
    assert len(upstream.attempts(prompt)) == 1, "retried an answer that must not be retried"
    if marker == "[500]":
        assert "500" in info.value.detail and "internal failure (test marker)" in info.value.detail
    if marker == "[slow]":
        assert 0.9 < elapsed < SLOW_S - 1, f"timed out after {elapsed:.2f} s"


@slow
def test_503_once_is_retried_and_then_released(upstream: Upstream) -> None:
    prompt = unique("[503-once] a bridge")
    with UpstreamOpenAIImages(upstream.openai_url, retries=1) as gen:
        out = gen.generate(job(prompt))
    assert len(out.images) == 1
    assert len(upstream.attempts(prompt)) == 2


@slow
@pytest.mark.parametrize("backend", [UpstreamOpenAIImages, UpstreamA1111])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_permanent_503_gives_up_after_retries_plus_one_attempts(
    upstream: Upstream, backend: Backend, retries: int
) -> None:
    prompt = unique("[503] a tower")
    with make(upstream, backend, retries=retries) as gen, pytest.raises(StageError) as info:
        gen.generate(job(prompt))
    assert info.value.code == codes.UPSTREAM_ERROR and "503" in info.value.detail
    assert len(upstream.attempts(prompt)) == retries + 1


def test_an_upstream_that_is_down_is_unavailable_after_bounded_retries() -> None:
    with refused_port() as port:
        gen = UpstreamOpenAIImages(f"http://127.0.0.1:{port}/v1", retries=2, timeout_s=5)
        started = time.monotonic()
        with gen, pytest.raises(StageError) as info:
            gen.generate(job("a meadow"))
    assert (info.value.code, info.value.status) == (codes.UPSTREAM_UNAVAILABLE, 503)
    assert "3 attempt(s)" in info.value.detail
    assert time.monotonic() - started < 3.0  # two short backoffs, not a timeout per attempt


@slow
def test_connections_are_pooled(upstream: Upstream) -> None:
    prompts = [unique("pooled") for _ in range(3)]
    with UpstreamA1111(upstream.url) as gen:
        for prompt in prompts:
            gen.generate(job(prompt))
    with UpstreamA1111(upstream.url) as other:
        other.generate(job(prompts[0]))
    assert [len(upstream.attempts(p)) for p in prompts] == [2, 1, 1]
    # The three requests of one backend came over one kept-alive connection; the second
    # backend has a client (and a connection) of its own.
    first_backend = [upstream.attempts(p)[0]["client_port"] for p in prompts]
    assert len(set(first_backend)) == 1
    assert upstream.attempts(prompts[0])[1]["client_port"] != first_backend[0]


@slow
def test_a_closed_backend_refuses_to_generate(upstream: Upstream) -> None:
    gen = UpstreamOpenAIImages(upstream.openai_url)
    gen.close()
    with pytest.raises(StageError) as info:
        gen.generate(job("a river"))
    assert info.value.code == codes.GENERATION_CLOSED


# -- construction and settings ---------------------------------------------------------------------


def test_name_and_untrained_are_read_only() -> None:
    with UpstreamA1111("http://127.0.0.1:9", untrained=True) as gen:
        assert (gen.name, gen.untrained) == ("a1111@127.0.0.1:9", True)
        with pytest.raises(AttributeError):
            gen.name = "other"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            gen.untrained = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"base_url": "ftp://127.0.0.1/v1"}, codes.CONFIG_UPSTREAM_URL),
        ({"base_url": "http:///v1"}, codes.CONFIG_UPSTREAM_URL),
        ({"base_url": "http://127.0.0.1:9", "retries": 6}, codes.CONFIG_INVALID),
        ({"base_url": "http://127.0.0.1:9", "timeout_s": 0}, codes.CONFIG_INVALID),
    ],
)
def test_bad_construction_is_a_configuration_error(kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        UpstreamOpenAIImages(**kwargs)
    assert info.value.code == code


def test_settings_build_the_upstream_backends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONSENTRY_UPSTREAM_API_KEY", "sk-from-env")
    settings = Settings(
        data_dir=tmp_path,
        generator=GeneratorKind.openai,
        upstream_url="http://127.0.0.1:9/v1",
        upstream_model="m",
        upstream_timeout_s=3,
        upstream_retries=1,
    )
    assert settings.generator is GeneratorKind.openai and settings.upstream_api_key == "sk-from-env"
    assert "sk-from-env" not in repr(settings)
    gen = build_generator(settings)
    assert isinstance(gen, UpstreamOpenAIImages) and gen.name == "openai:m@127.0.0.1:9"
    assert (gen.timeout_s, gen.retries, gen.untrained) == (3.0, 1, False)
    gen.close()
    a1111 = build_generator(
        Settings(
            data_dir=tmp_path,
            generator=GeneratorKind.a1111,
            upstream_url="http://h:7860",
            upstream_untrained=True,
        )
    )
    assert isinstance(a1111, UpstreamA1111) and (a1111.name, a1111.untrained) == ("a1111@h:7860", True)
    a1111.close()


@pytest.mark.parametrize("kind", [GeneratorKind.openai, GeneratorKind.a1111])
def test_an_upstream_generator_without_a_url_is_a_configuration_error(
    kind: GeneratorKind, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_generator(Settings(data_dir=tmp_path, generator=kind))
    assert info.value.code == codes.CONFIG_UPSTREAM_URL


@pytest.mark.parametrize("retries", [-1, 6])
def test_settings_bound_the_retries(retries: int, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, upstream_retries=retries)
