"""IP-Adapter identity conditioning end to end: weights given by path in the settings, built by
the tests themselves (tiny, untrained, like the tiny pipeline), through the gate to a signed
release whose manifest names the mode and binds the references by hash. A missing or mismatched
weight file is a clear configuration error. The face model is the package's fake."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.gateway.testing import FingerprintAnalyzer, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.generation.base import GenerationMode
from consentry.generation.tiny_ip_adapter import IPAdapterPaths, build_tiny_ip_adapter
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError
from consentry.provenance.manifest import read_manifest


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ip_paths(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> IPAdapterPaths:
    return build_tiny_ip_adapter(tiny_model, tmp_path_factory.mktemp("ip") / "ip", seed=0)


def settings_for(tmp_path: Path, tiny_model: Path, dev_keys: Path, **ip: object) -> Settings:
    return Settings(data_dir=tmp_path, model_dir=tiny_model, keys_dir=dev_keys, device="cpu", **ip)  # type: ignore[arg-type]


async def test_an_ip_adapter_release_names_its_mode_and_references(
    tmp_path: Path, tiny_model: Path, dev_keys: Path, ip_paths: IPAdapterPaths
) -> None:
    analyzer = FingerprintAnalyzer()
    photos = [png(analyzer.register(synthetic_photo(k), "ana")) for k in range(5)]
    settings = settings_for(
        tmp_path,
        tiny_model,
        dev_keys,
        ip_adapter_weights=ip_paths.weights_file,
        ip_adapter_image_encoder=ip_paths.image_encoder_dir,
    )
    gate = await open_gate(settings, analyzer=analyzer)
    try:
        ana = await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="Ana", photos=tuple(photos[:3])))
        studio = (await gate.create_principal(LOCAL_ACTOR, "studio", "requester")).principal
        terms = GrantRequest(
            identity_id=ana.id,
            principal=studio.id,
            purposes=(Purpose.portrait,),
            attested_by="test",
            consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
        )
        await gate.grant(LOCAL_ACTOR, terms)
        request = GenerationRequest(
            subject_id=ana.id,
            purpose=Purpose.portrait,
            prompt="a portrait",
            mode=GenerationMode.ip_adapter,
            references=(photos[3], photos[4]),
        )
        release = await gate.generate(studio, request)
        assert (release.mode, release.untrained) == ("ip_adapter", True)
        report = read_manifest(release.images[0], "image/png", None)
        assert report.generation is not None and report.generation["mode"] == "ip_adapter"
        assert [i["hash"] for i in report.ingredients] == [hashlib.sha256(p).hexdigest() for p in photos[3:]]
        assert all(not i["embedded"] for i in report.ingredients)
    finally:
        await gate.close()


async def test_a_missing_or_mismatched_ip_adapter_is_a_configuration_error(
    tmp_path: Path, tiny_model: Path, dev_keys: Path, ip_paths: IPAdapterPaths
) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    cases = {
        "encoder missing": (
            {"ip_adapter_weights": ip_paths.weights_file},
            codes.MODEL_WEIGHTS_MISSING,
        ),
        "file missing": (
            {
                "ip_adapter_weights": tmp_path / "nope.safetensors",
                "ip_adapter_image_encoder": ip_paths.image_encoder_dir,
            },
            codes.MODEL_WEIGHTS_MISSING,
        ),
        "not weights": (
            {
                "ip_adapter_weights": garbage,
                "ip_adapter_image_encoder": ip_paths.image_encoder_dir,
            },
            codes.MODEL_WEIGHTS_INVALID,
        ),
    }
    for name, (ip, code) in cases.items():
        gate = await open_gate(
            settings_for(tmp_path / name, tiny_model, dev_keys, **ip), analyzer=FingerprintAnalyzer()
        )
        try:
            with pytest.raises(ConfigurationError) as caught:
                await gate.warm()  # models load at start-up: a bad file stops the gateway there
            assert caught.value.code == code, name
            assert "ip_adapter" in caught.value.detail, caught.value.detail
        finally:
            await gate.close()
