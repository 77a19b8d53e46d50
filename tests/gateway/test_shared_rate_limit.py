"""Rate limits held across workers: three processes spending from one principal's bucket in
Redis together never exceed the configured rate (Redis runs at 127.0.0.1:6379; .ci/run starts it)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("CONSENTRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from consentry.gateway.ratelimit import RedisTokenBuckets
    from consentry.policies.errors import RateLimitedError

    async def main(url, prefix, per_minute, burst, start_at, seconds):
        buckets = RedisTokenBuckets(url, per_minute, burst, prefix=prefix)
        allowed = refused = 0
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        while time.time() < start_at + seconds:
            try:
                await buckets.take("P")
                allowed += 1
            except RateLimitedError:
                refused += 1
            await asyncio.sleep(0.002)
        await buckets.close()
        print(json.dumps({"allowed": allowed, "refused": refused}))

    url, prefix, per_minute, burst, start_at, seconds = sys.argv[1:]
    asyncio.run(main(url, prefix, float(per_minute), int(burst), float(start_at), float(seconds)))
    """
)


@pytest.fixture(scope="module")
def redis_up() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis not reachable at {REDIS_URL} ({exc}); .ci/run starts it")
    return REDIS_URL


def test_three_workers_together_never_exceed_the_rate(redis_up: str) -> None:
    per_minute, burst, seconds = 120.0, 5, 3.0  # 2 tokens a second after a burst of 5
    prefix = f"consentry:test:{secrets.token_hex(4)}:"
    start_at = time.time() + 3.0  # every worker imported and connected before the clock starts
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                redis_up,
                prefix,
                str(per_minute),
                str(burst),
                str(start_at),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=60)
        assert w.returncode == 0
        results.append(json.loads(out))
    allowed = sum(r["allowed"] for r in results)
    bound = burst + per_minute / 60.0 * seconds + 1  # +1: a token may refill right at the edge
    assert allowed <= bound, (allowed, bound, results)
    # Not vacuous: the bucket did grant its burst and its refill, and refused the rest.
    assert allowed >= burst + per_minute / 60.0 * seconds - 2, results
    assert all(r["allowed"] > 0 or r["refused"] > 0 for r in results)
    assert sum(r["refused"] for r in results) > 100


async def test_gate_answers_429_from_the_shared_bucket(redis_up: str) -> None:
    from consentry.gateway.ratelimit import RedisTokenBuckets
    from consentry.policies.errors import RateLimitedError

    prefix = f"consentry:test:{secrets.token_hex(4)}:"
    one, two = (RedisTokenBuckets(redis_up, 1, 2, prefix=prefix) for _ in range(2))
    try:
        await one.take("P")
        await two.take("P")  # a second replica spends from the same bucket
        with pytest.raises(RateLimitedError) as limited:
            await one.take("P")
        assert 1 <= limited.value.extra["retry_after"] <= 60
        await two.take("Q")  # another principal has its own bucket
    finally:
        await one.close()
        await two.close()


async def test_unreachable_limiter_fails_closed() -> None:
    from consentry.gateway.ratelimit import RedisTokenBuckets
    from consentry.policies.errors import StageError

    buckets = RedisTokenBuckets("redis://127.0.0.1:1/0", 60, 5)
    with pytest.raises(StageError) as down:
        await buckets.take("P")
    assert down.value.code == "rate.unavailable" and down.value.status == 503
    await buckets.close()


@pytest.mark.slow
def test_three_gateway_workers_share_the_rate(
    redis_up: str, tmp_path: Path, tiny_model: Path, dev_keys: Path
) -> None:
    """``consentry serve --workers 3`` with ``redis_url``: the workers together admit no more
    than one bucket allows. A request for an unknown subject passes the limiter and then gets
    404, so each answer says whether the limiter let it through (404) or not (429)."""
    import socket

    import httpx

    from consentry.gateway.cli import main

    env = {
        "CONSENTRY_DATA_DIR": str(tmp_path),
        "CONSENTRY_MODEL_DIR": str(tiny_model),
        "CONSENTRY_KEYS_DIR": str(dev_keys),
        "CONSENTRY_DEVICE": "cpu",
        "CONSENTRY_REDIS_URL": redis_up,
        "CONSENTRY_RATE_LIMIT_PER_MINUTE": "30",
        "CONSENTRY_RATE_LIMIT_BURST": "4",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            # A principal name unique to this run: Redis keys are per principal id.
            assert main(["principal", "add", f"P-{secrets.token_hex(3)}", "--role", "requester"]) == 0
        key = json.loads(out.getvalue())["api_key"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consentry.gateway.cli", "serve", "--port", str(port), "--workers", "3"],
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while log.read_text(errors="replace").count("Application startup complete") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[
                -2000:
            ]
            time.sleep(0.5)
        body = {"subject_id": "idn_nobody", "purpose": "portrait", "prompt": "p"}
        started = time.monotonic()
        statuses = []
        for _ in range(40):  # a fresh connection each time, so the kernel spreads them over the workers
            with httpx.Client(timeout=30) as client:
                r = client.post(f"http://127.0.0.1:{port}/v1/generate", json=body, headers={"X-API-Key": key})
            statuses.append(r.status_code)
        elapsed = time.monotonic() - started
    finally:
        import signal as _signal

        os.killpg(proc.pid, _signal.SIGTERM)
        proc.wait(30)
    admitted = statuses.count(404)
    assert set(statuses) <= {404, 429}, statuses
    bound = 4 + 30 / 60.0 * elapsed + 1
    assert 4 <= admitted <= bound, (admitted, bound, statuses)
    pids = {
        line.split("[")[1].split("]")[0]
        for line in log.read_text().splitlines()
        if "Started server process" in line
    }
    assert len(pids) == 3, pids
