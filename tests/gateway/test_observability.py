"""/metrics in Prometheus format, and JSON log lines that carry the request and record ids."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from consentry.gateway.logs import JsonFormatter
from tests.gateway.conftest import AppClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_decisions_and_time_stages(client: AppClient, role_keys: dict[str, str]) -> None:
    p = {"X-API-Key": role_keys["P"]}
    before = (await client.get("/metrics")).text
    released = sample(before, "consentry_generation_requests_total", decision="released", code="released")
    assert (
        await client.post("/v1/generate", json={"prompt": "a quiet harbour"}, headers=p)
    ).status_code == 201
    assert (await client.post("/v1/generate", json={"prompt": "a nude statue"}, headers=p)).status_code == 403
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        sample(text, "consentry_generation_requests_total", decision="released", code="released")
        == released + 1
    )
    assert (
        sample(text, "consentry_generation_requests_total", decision="refused", code="consent.prompt_denied")
        >= 1
    )
    assert sample(text, "consentry_stage_seconds_count", stage="generate") >= 1
    assert sample(text, "consentry_stage_seconds_count", stage="consent") >= 2
    assert sample(text, "consentry_audit_append_seconds_count") >= 2
    assert "consentry_queue_depth 0.0" in text
    assert "# TYPE consentry_upstream_errors_total counter" in text


async def test_every_log_line_of_a_request_carries_its_ids(
    client: AppClient, role_keys: dict[str, str]
) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("consentry")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        r = await client.post(
            "/v1/generate",
            json={"prompt": "a lighthouse at night"},
            headers={"X-API-Key": role_keys["P"], "X-Request-ID": "req-test-42"},
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert r.status_code == 201 and r.headers["x-request-id"] == "req-test-42"
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines, "the request logged nothing"
    assert all(line["request_id"] == "req-test-42" for line in lines), lines
    assert all(line["record_id"] == r.json()["record_id"] for line in lines), lines
    assert any("released" in line["message"] for line in lines)
    other = await client.get("/health/live")
    assert other.headers["x-request-id"].startswith("req_")  # a fresh id when the caller sends none
