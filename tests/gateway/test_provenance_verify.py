"""Verification finds a released image's record even after the world stripped its metadata:
re-encoded as JPEG 75 without metadata, resized, cropped. An image never released resolves to
nothing (no false match)."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from tests.gateway.conftest import AppClient, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg75_stripped(img: Image.Image) -> bytes:
    # A fresh image from the pixels alone: no C2PA, no EXIF, no XMP travel along.
    return _encode(Image.frombytes("RGB", img.size, img.convert("RGB").tobytes()), "JPEG", quality=75)


def resized(scale: float) -> Callable[[Image.Image], bytes]:
    def attack(img: Image.Image) -> bytes:
        size = (round(img.width * scale), round(img.height * scale))
        return _encode(img.resize(size, Image.Resampling.BICUBIC), "PNG")

    return attack


def resized_and_back(img: Image.Image) -> bytes:
    half = img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC)
    return _encode(half.resize(img.size, Image.Resampling.BICUBIC), "PNG")


def cropped(img: Image.Image) -> bytes:
    # Keep the central 90% x 90%, no resize back.
    dx, dy = round(img.width * 0.05), round(img.height * 0.05)
    return _encode(img.crop((dx, dy, img.width - dx, img.height - dy)), "PNG")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def released(client: AppClient, admin_key: str, faces_dir: Path) -> tuple[dict, str]:
    h = {"X-API-Key": admin_key}
    key = (await client.post("/v1/principals", json={"name": "P", "role": "requester"}, headers=h)).json()[
        "api_key"
    ]
    photos = [
        b64(faces_dir / "lfw" / "Gerhard_Schroeder" / f"Gerhard_Schroeder_{n:04d}.jpg") for n in (1, 2, 3)
    ]
    identity = (await client.post("/v1/identities", json={"label": "A", "photos": photos}, headers=h)).json()[
        "id"
    ]
    grant = {
        "identity_id": identity,
        "principal": "P",
        "purposes": ["avatar"],
        "attested_by": "op",
        "consent_text_sha256": hashlib.sha256(b"c").hexdigest(),
    }
    assert (await client.post("/v1/grants", json=grant, headers=h)).status_code == 201
    body = {"subject_id": identity, "purpose": "avatar", "prompt": "an avatar", "width": 512, "height": 512}
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": key})
    assert r.status_code == 201, r.text
    return r.json(), admin_key


async def verify(client: AppClient, key: str, data: bytes) -> dict:
    r = await client.post(
        "/v1/provenance/verify", json={"image": base64.b64encode(data).decode()}, headers={"X-API-Key": key}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_released_file_verifies_fully(client: AppClient, released) -> None:
    body, key = released
    report = await verify(client, key, base64.b64decode(body["images"][0]))
    assert report["c2pa"]["state"] == "Trusted"
    assert report["c2pa"]["generation"]["untrained"] is True
    assert report["watermark"]["payload"] == body["watermark"]
    assert report["record"]["id"] == body["record_id"] and report["provenance_found"]


@pytest.mark.parametrize(
    "attack",
    # Kept at 0.75x is left out on purpose: the tiny pipeline's noise-like outputs are found only
    # ~80% of the time at that scale (bench/results/watermark_robustness.md); photos fare better.
    [jpeg75_stripped, resized(0.5), resized_and_back, cropped],
    ids=["jpeg75-stripped", "resized-0.5", "resized-0.5-and-back", "cropped-10pct"],
)
async def test_stripped_copies_resolve_through_the_watermark(client: AppClient, released, attack) -> None:
    body, key = released
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    report = await verify(client, key, attack(image))
    assert report["c2pa"]["state"] is None  # the manifest did not survive: only the mark did
    assert report["watermark"]["found"], report["watermark"]
    assert report["record"]["id"] == body["record_id"]


async def test_never_released_image_finds_nothing(client: AppClient, released, faces_dir: Path) -> None:
    _, key = released
    for path in sorted((faces_dir / "lfw" / "Gerhard_Schroeder").glob("*.jpg"))[:3]:
        photo = Image.open(path).convert("RGB").resize((512, 512))
        report = await verify(client, key, _encode(photo, "PNG"))
        assert report["provenance_found"] is False and report["record"] is None
        assert report["watermark"]["found"] is False
