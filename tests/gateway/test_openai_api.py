"""The OpenAI-compatible Images API, driven by the real ``openai`` package against a running
``consentry serve``: generate, edit with a reference, refusals read as OpenAI exceptions that
carry the Consentry code, and bad input in the OpenAI error shape with nothing stored."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.gateway.requests import EnrollmentRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.gateway.wiring import open_gate
from consentry.generation.base import Generator
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose

pytestmark = pytest.mark.slow

A, B = "Colin_Powell", "George_W_Bush"


def lfw(faces: Path, person: str, n: int) -> Path:
    return faces / "lfw" / person / f"{person}_{n:04d}.jpg"


@dataclass
class Served:
    url: str
    keys: dict[str, str]
    subject: str
    faces: Path
    data: Path

    def client(self, who: str = "P") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[who], max_retries=0, timeout=120)

    def audit_events(self) -> int:
        r = httpx.get(f"{self.url}/v1/audit/verify", headers={"X-API-Key": self.keys["admin"]}, timeout=60)
        return int(r.json()["events"])


async def prepare(
    settings: Settings, faces: Path, shared_models: tuple[FaceAnalyzer, Generator]
) -> tuple[dict[str, str], str]:
    analyzer, generator = shared_models
    gate = await open_gate(settings, analyzer=analyzer, generator=generator)
    try:
        keys = {
            name: (await gate.create_principal(LOCAL_ACTOR, name, role)).secret
            for name, role in [("admin", "admin"), ("P", "requester"), ("Q", "requester")]
        }
        photos = tuple(lfw(faces, A, n).read_bytes() for n in (1, 2, 3))
        subject = await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="A", photos=photos))
        others = tuple(lfw(faces, B, n).read_bytes() for n in (1, 2, 3))
        await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="B", photos=others))
        p = await gate.principal_named(LOCAL_ACTOR, "P")
        await gate.grant(
            LOCAL_ACTOR,
            GrantRequest(
                identity_id=subject.id,
                principal=p.id,
                purposes=(Purpose.portrait,),
                attested_by="test",
                consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
            ),
        )
    finally:
        await gate.close()
    return keys, subject.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    dev_keys: Path,
    faces_dir: Path,
    shared_models: tuple[FaceAnalyzer, Generator],
) -> Iterator[Served]:
    import asyncio

    data = tmp_path_factory.mktemp("openai")
    env = {
        **os.environ,
        "CONSENTRY_DATA_DIR": str(data),
        "CONSENTRY_MODEL_DIR": str(tiny_model),
        "CONSENTRY_KEYS_DIR": str(dev_keys),
        "CONSENTRY_DEVICE": "cpu",
    }
    settings = Settings(data_dir=data, model_dir=tiny_model, keys_dir=dev_keys, device="cpu")
    keys, subject = asyncio.run(prepare(settings, faces_dir, shared_models))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "consentry.gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            assert time.monotonic() < deadline, "consentry serve did not become ready"
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield Served(url, keys, subject, faces_dir, data)
    finally:
        proc.terminate()
        proc.wait(30)


def png_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_without_a_subject(served: Served) -> None:
    resp = served.client().images.generate(prompt="a mountain lake at dawn", size="256x256")
    assert resp.data is not None
    assert len(resp.data) == 1 and resp.created > 0
    image = png_of(resp.data[0].b64_json or "")
    assert image.format == "PNG" and image.size == (256, 256)
    assert (resp.model_extra or {})["consentry"]["record_id"].startswith("gen_")


def test_edit_with_a_reference_of_the_consenting_subject(served: Served) -> None:
    with lfw(served.faces, A, 5).open("rb") as photo:
        resp = served.client().images.edit(
            image=photo,
            prompt="a portrait in a garden",
            n=1,
            extra_body={"subject_id": served.subject, "purpose": "portrait"},
        )
    record = (resp.model_extra or {})["consentry"]
    assert resp.data is not None
    assert len(resp.data) == 1 and record["untrained"] is True
    # The release is the gate's: its provenance reads back through the Consentry API.
    verify = httpx.post(
        f"{served.url}/v1/provenance/verify",
        json={"image": resp.data[0].b64_json},
        headers={"Authorization": f"Bearer {served.keys['P']}"},
        timeout=60,
    ).json()
    assert verify["record"]["id"] == record["record_id"] and verify["c2pa"]["state"] in ("Valid", "Trusted")


def test_refusals_are_openai_errors_with_the_consentry_code(served: Served) -> None:
    with pytest.raises(openai.PermissionDeniedError) as denied:
        served.client("Q").images.generate(
            prompt="a portrait", extra_body={"subject_id": served.subject, "purpose": "portrait"}
        )
    assert denied.value.status_code == 403 and denied.value.code == "consent.missing"
    with (
        lfw(served.faces, B, 5).open("rb") as photo,
        pytest.raises(openai.PermissionDeniedError) as protected,
    ):
        served.client().images.edit(image=photo, prompt="make him smile")
    assert protected.value.code == "face.protected_identity"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"response_format": "url"}, "input.response_format_unsupported"),
        ({"n": 10}, "input.invalid"),
        ({"model": "dall-e-3"}, "input.unknown_model"),
        ({"size": "huge"}, "input.invalid"),
        ({"size": "100x100"}, "generation.invalid_params"),
    ],
)
def test_bad_input_is_an_openai_400_and_stores_nothing(
    served: Served, kwargs: dict[str, Any], code: str
) -> None:
    before = served.audit_events()
    with pytest.raises(openai.BadRequestError) as bad:
        served.client().images.generate(prompt="a lake", **kwargs)  # values the API refuses
    assert bad.value.status_code == 400 and bad.value.code == code, bad.value.body
    assert served.audit_events() == before


def test_wrong_multipart_and_bad_key(served: Served) -> None:
    before = served.audit_events()
    r = httpx.post(
        f"{served.url}/v1/images/edits",
        json={"prompt": "no file"},
        headers={"Authorization": f"Bearer {served.keys['P']}"},
        timeout=60,
    )
    assert 400 <= r.status_code < 500 and "code" in r.json()["error"], r.text
    r = httpx.post(
        f"{served.url}/v1/images/edits",
        files={"prompt": (None, "x")},
        headers={"Authorization": f"Bearer {served.keys['P']}"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "input.invalid", r.text
    with pytest.raises(openai.AuthenticationError) as unauth:
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="nope", max_retries=0).images.generate(prompt="x")
    assert unauth.value.code == "auth.invalid_key"
    assert served.audit_events() == before
