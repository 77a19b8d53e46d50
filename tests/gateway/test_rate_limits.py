"""Per-principal rate limits answer 429 problem+json with Retry-After."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.ratelimit import TokenBuckets
from consentry.policies.config import Settings
from consentry.policies.errors import RateLimitedError
from tests.gateway.conftest import serve


def test_token_buckets_refill_with_time() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=6, burst=2, clock=lambda: now[0])
    buckets.take_now("p")
    buckets.take_now("p")
    with pytest.raises(RateLimitedError) as exc:
        buckets.take_now("p")
    assert exc.value.extra["retry_after"] == 10
    buckets.take_now("q")  # another principal has its own bucket
    now[0] = 10.0
    buckets.take_now("p")


async def test_generate_is_rate_limited_per_principal(
    tmp_path: Path, tiny_model: Path, dev_keys: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        model_dir=tiny_model,
        keys_dir=dev_keys,
        device="cpu",
        rate_limit_per_minute=1,
        rate_limit_burst=2,
    )
    async with serve(create_app(ConsentryConfig(settings=settings))) as client:
        gate = client.app.state["consentry_gate"]
        p = (await gate.principals.create("P", "requester")).secret
        q = (await gate.principals.create("Q", "requester")).secret
        body = {"subject_id": "idn_none", "purpose": "portrait", "prompt": "p"}
        codes = [
            (await client.post("/v1/generate", json=body, headers={"X-API-Key": p})).status_code
            for _ in range(3)
        ]
        assert codes == [404, 404, 429]
        r = await client.post("/v1/generate", json=body, headers={"X-API-Key": p})
        assert r.status_code == 429 and r.json()["code"] == "rate.limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert (await client.post("/v1/generate", json=body, headers={"X-API-Key": q})).status_code == 404
