"""Hostile input: every case gets a 4xx problem+json with a stable code, nothing is stored, and
the process stays up."""

from __future__ import annotations

import base64
import io
import resource
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.gateway.conftest import audit_event_count, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")


def png_bomb(side: int = 10_000) -> bytes:
    """A 1-bit PNG of side x side (100 megapixels at 10,000) that is a few kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    raw = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def generate_body(**overrides: object) -> dict:
    return {"subject_id": "idn_x", "purpose": "portrait", "prompt": "a portrait", **overrides}


async def test_decompression_bomb_is_refused_fast_with_bounded_memory(client, role_keys) -> None:
    bomb = png_bomb()
    assert len(bomb) < 20_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = await client.post(
        "/v1/provenance/verify",
        json={"image": base64.b64encode(bomb).decode()},
        headers={"X-API-Key": role_keys["aud"]},
    )
    elapsed = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert (r.status_code, r.json()["code"]) == (413, "image.too_large")
    assert elapsed < 1.0, elapsed
    assert grown_mb < 50, f"peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (generate_body(prompt="x" * 10_000_000), "input.invalid"),
        (generate_body(prompt="x" * 70_000_000), "input.too_large"),
        (generate_body(steps=-1), "input.invalid"),
        (generate_body(steps=10**12), "input.invalid"),
        (generate_body(width=10**9), "input.invalid"),
        (generate_body(seed=-5), "input.invalid"),
        (generate_body(num_images=0), "input.invalid"),
        (generate_body(extra_field=True), "input.invalid"),
        (generate_body(subject_id="../../etc/passwd"), "identity.not_found"),
        (generate_body(references=[base64.b64encode(animated_gif()).decode()]), "identity.not_found"),
    ],
)
async def test_bad_generation_requests(client, role_keys, body: dict, code: str) -> None:
    before = await audit_event_count(client, role_keys)
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": role_keys["P"]})
    assert 400 <= r.status_code < 500 and r.json()["code"] == code, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await audit_event_count(client, role_keys) == before


async def test_animated_gif_and_multipage_tiff_are_refused(client, role_keys, faces_dir: Path) -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    good = [b64(faces_dir / "lfw" / "Hugo_Chavez" / f"Hugo_Chavez_{n:04d}.jpg") for n in (1, 2, 3)]
    for data in (animated_gif(), buf.getvalue()):
        body = {"label": "x", "photos": [*good, base64.b64encode(data).decode()]}
        r = await client.post("/v1/identities", json=body, headers={"X-API-Key": role_keys["op"]})
        assert (r.status_code, r.json()["code"]) == (400, "image.multi_frame")


async def test_lying_content_types(client, role_keys, faces_dir: Path) -> None:
    h = {"X-API-Key": role_keys["aud"]}
    # A JPEG body sent as if it were JSON, and JSON sent as an image.
    jpeg = (faces_dir / "lfw" / "Hugo_Chavez" / "Hugo_Chavez_0001.jpg").read_bytes()
    r = await client.post(
        "/v1/provenance/verify", content=jpeg, headers={**h, "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "input.malformed_json"
    r = await client.post(
        "/v1/provenance/verify", content=b'{"image": "aGk="}', headers={**h, "content-type": "image/jpeg"}
    )
    assert 400 <= r.status_code < 500 and "code" in r.json()
    # A PNG payload named as anything: the server sniffs the bytes, never trusts a name.
    r = await client.post(
        "/v1/provenance/verify", json={"image": b64(faces_dir / "formats" / "einstein.png")}, headers=h
    )
    assert r.status_code == 201 and r.json()["provenance_found"] is False


async def test_path_like_ids_in_urls(client, role_keys) -> None:
    op = {"X-API-Key": role_keys["op"]}
    for path in (
        "/v1/grants/..%2F..%2Fetc/revoke",
        "/v1/identities/%2e%2e/erase",
        "/v1/grants/" + "g" * 500 + "/revoke",
    ):
        r = await client.post(path, headers=op)
        assert 400 <= r.status_code < 500 and "code" in r.json(), (path, r.text)


async def test_process_is_still_up(client, role_keys) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
