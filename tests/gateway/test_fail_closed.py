"""The gate fails closed: a stage that raises or hangs refuses, is audited, and releases nothing.

The faulty generators are real implementations of the Generator protocol (as httpx's
MockTransport is of a transport), injected through the plugin config; nothing is monkeypatched.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.wiring import open_gate
from consentry.generation.base import GenerationJob, GenerationOutput
from consentry.policies.config import Settings
from tests.gateway.conftest import b64, serve


class RaisingGenerator:
    name = "raising"
    untrained = True

    def generate(self, job: GenerationJob) -> GenerationOutput:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def close(self) -> None:
        pass


class HangingGenerator:
    name = "hanging"
    untrained = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self.release.wait(30)
        raise RuntimeError("released by the test")

    def close(self) -> None:
        self.release.set()


class RaisingAnalyzer:
    """A face analyzer whose detector breaks (e.g. a CUDA fault) on every call."""

    def __init__(self, real) -> None:
        self.embedder = real.embedder  # so enrollment-free index lookups still know the embedder

    def analyze(self, images):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")


async def _world(client, faces_dir: Path, gate, purpose: str = "avatar") -> tuple[str, dict]:
    """A requester key and a generate body for an enrolled, granted subject."""
    admin = (await gate.principals.create("admin", "admin")).secret
    h = {"X-API-Key": admin}
    p = (await client.post("/v1/principals", json={"name": "P", "role": "requester"}, headers=h)).json()
    photos = [b64(faces_dir / "lfw" / "Jacques_Chirac" / f"Jacques_Chirac_{n:04d}.jpg") for n in (1, 2, 3)]
    r = await client.post("/v1/identities", json={"label": "A", "photos": photos}, headers=h)
    assert r.status_code == 201, r.text
    ident = r.json()
    grant = {
        "identity_id": ident["id"],
        "principal": "P",
        "purposes": [purpose],
        "attested_by": "t",
        "consent_text_sha256": hashlib.sha256(b"t").hexdigest(),
    }
    assert (await client.post("/v1/grants", json=grant, headers=h)).status_code == 201
    return p["api_key"], {"subject_id": ident["id"], "purpose": purpose, "prompt": "an avatar"}


async def _assert_refused_and_audited(client, gate, key: str, body: dict, code: str, stage: str, out: Path):
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": key})
    assert r.status_code == 503, r.text
    problem = r.json()
    assert problem["code"] == code and problem["stages"][stage]["fault"] is True
    assert "images" not in problem
    events = [e async for e in gate.audit.events()]
    assert events[-1].kind == "generation.refused" and events[-1].body["decision"] == code
    assert (await gate.audit.verify()).ok
    assert not out.exists() or not any(out.iterdir())


async def test_detector_that_raises_refuses_after_generation(
    tmp_path: Path, tiny_model: Path, dev_keys: Path, faces_dir: Path, shared_models
) -> None:
    analyzer, generator = shared_models
    settings = Settings(data_dir=tmp_path, model_dir=tiny_model, keys_dir=dev_keys, device="cpu")
    broken = RaisingAnalyzer(analyzer)

    def app_with(face_analyzer):
        async def factory(s: Settings):
            return await open_gate(s, analyzer=face_analyzer, generator=generator)

        return create_app(ConsentryConfig(settings=settings, gate_factory=factory))

    # Enrollment needs a working detector: set up with one gateway, then restart the gateway on
    # the same data with a detector that breaks.
    async with serve(app_with(analyzer)) as client:
        key, body = await _world(client, faces_dir, client.app.state["consentry_gate"])
    async with serve(app_with(broken)) as client:
        gate = client.app.state["consentry_gate"]
        body["references"] = [b64(faces_dir / "lfw" / "Jacques_Chirac" / "Jacques_Chirac_0004.jpg")]
        await _assert_refused_and_audited(
            client, gate, key, body, "stage.error", "verify_refs", tmp_path / "outputs"
        )


async def test_missing_signing_key_refuses_and_nothing_unsigned_leaves(
    tmp_path: Path, tiny_model: Path, faces_dir: Path, shared_models
) -> None:
    analyzer, generator = shared_models
    settings = Settings(
        data_dir=tmp_path, model_dir=tiny_model, keys_dir=tmp_path / "empty-keys", device="cpu"
    )

    async def factory(s: Settings):
        return await open_gate(s, analyzer=analyzer, generator=generator)

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    async with serve(app) as client:
        gate = app.state["consentry_gate"]
        key, body = await _world(client, faces_dir, gate)
        await _assert_refused_and_audited(
            client, gate, key, body, "keys.missing", "sign", tmp_path / "outputs"
        )
        stages = [e async for e in gate.audit.events()][-1].body["stages"]
        assert stages["watermark"]["allowed"] is True  # marked, but unsigned: still refused


@pytest.mark.parametrize(
    ("generator", "code", "status"),
    [(RaisingGenerator, "stage.error", 503), (HangingGenerator, "stage.timeout", 503)],
)
async def test_faulty_generator_is_refused_and_audited(
    tmp_path: Path, tiny_model: Path, dev_keys: Path, faces_dir: Path, generator, code: str, status: int
) -> None:
    settings = Settings(
        data_dir=tmp_path, model_dir=tiny_model, keys_dir=dev_keys, device="cpu", stage_timeout_s=1.0
    )
    fake = generator()

    async def factory(s: Settings):
        return await open_gate(s, generator=fake)

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    async with serve(app) as client:
        gate = app.state["consentry_gate"]
        key, body = await _world(client, faces_dir, gate)
        r = await client.post("/v1/generate", json=body, headers={"X-API-Key": key})
        assert r.status_code == status, r.text
        problem = r.json()
        assert problem["code"] == code
        assert problem["stages"]["generate"]["allowed"] is False
        assert "images" not in problem
        events = [e async for e in gate.audit.events()]
        assert events[-1].kind == "generation.refused" and events[-1].body["decision"] == code
        assert (await gate.audit.verify()).ok
        outputs = tmp_path / "outputs"
        assert not outputs.exists() or not any(outputs.iterdir())
