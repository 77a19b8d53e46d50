"""OpenAPI docs and health are served without a key; every documented route is there."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import AppClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_openapi_lists_every_route(client: AppClient) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    paths = set(r.json()["paths"])
    assert {
        "/health",
        "/v1/principals",
        "/v1/identities",
        "/v1/grants",
        "/v1/grants/{grant_id}/revoke",
        "/v1/generate",
        "/v1/provenance/verify",
        "/v1/audit/verify",
    } <= paths


async def test_health(client: AppClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["embedder"] == "dlib-resnet-v1" and body["untrained_model"] is True


async def test_unknown_route_is_problem_json(client: AppClient) -> None:
    r = await client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["code"] == "route.not_found"


async def test_every_operation_documents_its_response_model(client: AppClient) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    undocumented = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ok = [r for status, r in op["responses"].items() if status.startswith("2")]
            content = ok[0].get("content", {}) if ok else {}
            if content and set(content) <= {"text/plain", "text/html", "application/c2pa"}:
                # Not a JSON route: Prometheus' text format (/metrics), the /verify page's HTML,
                # a C2PA manifest store (/v1/manifests/{manifestId}).
                continue
            body = content.get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            if ref not in schemas or not schemas[ref].get("properties"):
                undocumented.append(f"{method.upper()} {path}")
    assert not undocumented, f"operations without a declared response model: {undocumented}"
    generate = schemas["GenerateOut"]["properties"]
    assert {"record_id", "watermark", "stages", "images", "audit_seq"} <= set(generate)
