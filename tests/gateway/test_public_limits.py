"""Public verification's edges, without a key: the rate limit per client address (429 +
Retry-After; shared through Redis; an unreachable Redis refuses with 503), every bad input a
4xx problem with its stable code, the /verify page (self-contained, no asset from elsewhere), the
switch that turns it all off, and the manifest-store reader on damaged files."""

from __future__ import annotations

import io
import os
import re
import secrets
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image

from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.public.page import CSP
from consentry.gateway.public.service import PublicService
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings
from consentry.policies.errors import StageError
from consentry.provenance.manifest_store import png_manifest_store
from consentry.provenance.watermark import ALGORITHM
from tests.gateway.conftest import AppClient, serve

REDIS_URL = os.environ.get("CONSENTRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
App = Callable[..., AbstractAsyncContextManager[AppClient]]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def app(tmp_path: Path, dev_keys: Path) -> App:
    """Serves a gateway (SQLite, the package's fakes) with the given settings."""

    @asynccontextmanager
    async def make(**settings: object) -> AsyncIterator[AppClient]:
        async def factory(s: Settings) -> Gate:
            return await open_gate(
                s, analyzer=FingerprintAnalyzer(), generator=PhotoGenerator(synthetic_photo(1))
            )

        s = Settings(data_dir=tmp_path, keys_dir=dev_keys, device="cpu", **settings)  # type: ignore[arg-type]
        async with serve(create_app(ConsentryConfig(settings=s, gate_factory=factory))) as client:
            yield client

    return make


def binding(value: str, alg: str = ALGORITHM) -> dict[str, str]:
    return {"alg": alg, "value": value}


async def test_the_rate_limit_is_per_client_address_without_a_key(app: App) -> None:
    async with app(
        public_rate_burst=2, public_rate_per_minute=1, public_client_header="X-Forwarded-For"
    ) as c:
        ask = "/v1/services/supportedAlgorithms"
        me = {"X-Forwarded-For": "198.51.100.7"}
        assert [(await c.get(ask, headers=me)).status_code for _ in range(2)] == [200, 200]
        limited = await c.get(ask, headers=me)
        assert limited.status_code == 429 and limited.json()["code"] == "rate.limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Spent before the body is read: an upload from a limited client is refused as well.
        upload = await c.post("/v1/matches/byContent", content=png(synthetic_photo(3)), headers=me)
        assert upload.status_code == 429
        # The right-most address is the one the proxy added; another client has its own bucket.
        other = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
        assert (await c.get(ask, headers=other)).status_code == 200
        # One IPv6 host holds a /64: its addresses share a bucket.
        v6 = [{"X-Forwarded-For": f"2001:db8:1:2::{n}"} for n in (1, 2, 3)]
        assert [(await c.get(ask, headers=h)).status_code for h in v6] == [200, 200, 429]
        # The page is static and not limited; keyed routes have their own limits.
        assert (await c.get("/verify", headers=me)).status_code == 200


async def test_without_a_client_header_the_peer_address_counts(app: App) -> None:
    async with app(public_rate_burst=1, public_rate_per_minute=1) as c:
        forged = {"X-Forwarded-For": "192.0.2.1"}
        assert (await c.get("/v1/services/supportedAlgorithms", headers=forged)).status_code == 200
        # A header the deployment does not trust picks no new bucket.
        assert (
            await c.get("/v1/services/supportedAlgorithms", headers={"X-Forwarded-For": "192.0.2.2"})
        ).status_code == 429


async def test_with_redis_every_process_spends_from_one_bucket(
    app: App, tmp_path: Path, dev_keys: Path
) -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis not reachable at {REDIS_URL} ({exc}); .ci/run starts it")
    # A fresh address per run: buckets outlive a test run in Redis.
    me = {"X-Forwarded-For": "10." + ".".join(str(secrets.randbelow(250) + 1) for _ in range(3))}
    shared = {
        "redis_url": REDIS_URL,
        "public_rate_burst": 2,
        "public_rate_per_minute": 1,
        "public_client_header": "X-Forwarded-For",
    }
    async with app(**shared) as first, app(**shared) as second:
        ask = "/v1/services/supportedAlgorithms"
        codes = [(await c.get(ask, headers=me)).status_code for c in (first, second, first, second)]
        assert codes == [200, 200, 429, 429]


async def test_an_unreachable_redis_refuses_public_requests(app: App) -> None:
    async with app(redis_url="redis://127.0.0.1:1/0") as c:
        r = await c.get("/v1/services/supportedAlgorithms")
        assert r.status_code == 503 and r.json()["code"] == "rate.unavailable"


BAD_INPUTS = [
    (
        "get",
        "/v1/matches/byBinding",
        {"params": binding("0011223344556677", "com.example.wm.1")},
        400,
        "public.alg_unsupported",
    ),
    ("get", "/v1/matches/byBinding", {"params": binding("not base64!")}, 400, "public.binding_value_invalid"),
    ("get", "/v1/matches/byBinding", {"params": binding("AAAA")}, 400, "public.binding_value_invalid"),
    ("get", "/v1/matches/byBinding", {"params": {"alg": ALGORITHM}}, 400, "input.invalid"),
    (
        "get",
        "/v1/matches/byBinding",
        {"params": binding("0011223344556677") | {"maxResults": 0}},
        400,
        "input.invalid",
    ),
    ("post", "/v1/matches/byBinding", {"json": {"alg": ALGORITHM}}, 400, "input.invalid"),
    (
        "post",
        "/v1/matches/byBinding",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
        "input.malformed_json",
    ),
    (
        "post",
        "/v1/matches/byContent",
        {"params": {"alg": "com.example.wm.1"}, "content": b"x"},
        400,
        "public.alg_unsupported",
    ),
    ("post", "/v1/matches/byContent", {"content": b""}, 400, "image.empty"),
    ("post", "/v1/matches/byContent", {"content": b"GIF89a not really"}, 400, "image.invalid"),
    ("post", "/v1/matches/byContent", {"json": {"image": "AAAA"}}, 415, "input.unsupported_media_type"),
    ("post", "/v1/public/verify", {"content": b"\x89PNG\r\n\x1a\n truncated"}, 400, "image.invalid"),
    (
        "post",
        "/v1/public/verify",
        {"content": b"\0" * 4096, "headers": {"Content-Type": "image/png"}},
        413,
        "input.too_large",
    ),
    ("get", "/v1/manifests/not-an-id", {}, 400, "public.manifest_id_invalid"),
    ("get", "/v1/manifests/gen_0011223344556677_0", {}, 404, "public.manifest_not_found"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    BAD_INPUTS,
    ids=[f"{n}-{case[-1]}" for n, case in enumerate(BAD_INPUTS)],
)
async def test_bad_input_is_a_4xx_problem_with_a_stable_code(
    app: App, method: str, path: str, kwargs: dict, status: int, code: str
) -> None:
    async with app(max_image_bytes=2048, public_rate_burst=100) as c:
        r = await getattr(c, method)(path, **kwargs)
        assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["code"] == code


async def test_what_was_never_released_matches_nothing(app: App) -> None:
    async with app() as c:
        r = await c.get("/v1/matches/byBinding", params=binding("0011223344556677"))
        assert r.status_code == 200 and r.json() == {"matches": []}
        photo = png(synthetic_photo(7))
        r = await c.post("/v1/matches/byContent", content=photo, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json() == {"matches": []}
        body = (await c.post("/v1/public/verify", content=photo)).json()
        assert body["watermark"]["found"] is False and body["record"] is None and body["tombstone"] is None
        assert body["assessment"]["basis"] == "none" and body["matches"] == []


async def test_the_verify_page_is_self_contained(app: App) -> None:
    async with app() as c:
        r = await c.get("/verify")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert (
            r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff"
        )
        html = r.text
        # Nothing is fetched from elsewhere: no URL with a scheme, no script, style or image
        # loaded by reference (the only ones are inline, allowed by hash).
        assert "http:" not in html and "https:" not in html
        assert not re.search(r"<(?:script|link|img|iframe)[^>]*\b(?:src|href)=", html)
        assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP and "unsafe" not in CSP
        # The script calls the public check beside the page, and writes answers as text only.
        assert '"v1/public/verify"' in html and "innerHTML" not in html


async def test_public_verification_can_be_switched_off(app: App) -> None:
    async with app(public_verification=False) as c:
        for path in ("/verify", "/v1/services/supportedAlgorithms", "/v1/manifests/gen_0011223344556677_0"):
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["code"] == "route.not_found"
        assert (await c.get("/health/live")).status_code == 200


async def test_a_full_public_service_refuses_at_once(app: App) -> None:
    async with app(public_decode_concurrency=1) as c:
        service: PublicService = c.app.state["consentry_public"]
        async with service.slot():
            with pytest.raises(StageError) as busy:
                async with service.slot():
                    pass
        assert busy.value.code == "public.busy" and busy.value.status == 503
        assert busy.value.extra["retry_after"] == 1
        async with service.slot():  # released again
            pass


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_the_manifest_store_reader_refuses_damaged_files() -> None:
    signature = b"\x89PNG\r\n\x1a\n"
    store = b"\x00\x00\x00\x10jumb-store-bytes"
    good = signature + chunk(b"IHDR", b"\0" * 13) + chunk(b"caBX", store) + chunk(b"IEND", b"")
    assert png_manifest_store(good) == store
    assert png_manifest_store(good[:40]) is None  # truncated inside the store
    damaged = bytearray(good)
    damaged[8 + 25 + 10] ^= 0xFF  # a byte of the store: its CRC no longer matches
    assert png_manifest_store(bytes(damaged)) is None
    assert png_manifest_store(signature + chunk(b"IHDR", b"\0" * 13) + chunk(b"IEND", b"")) is None
    assert png_manifest_store(b"\xff\xd8\xff\xe0 a jpeg") is None
