"""Bad input on every route: a clear 4xx problem+json with a stable code, and nothing stored."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.gateway.conftest import audit_event_count, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")


def bad_images(faces_dir: Path) -> dict[str, str]:
    return {
        "text": base64.b64encode(b"this is not an image at all").decode(),
        "truncated": b64(faces_dir / "invalid" / "truncated.jpg"),
        "corrupted": b64(faces_dir / "invalid" / "corrupted.png"),
        "five_byte_png": b64(faces_dir / "invalid" / "empty.png"),
        "not_base64": "@@@not base64@@@",
    }


@pytest.mark.parametrize("case", ["text", "truncated", "corrupted", "five_byte_png", "not_base64"])
async def test_bad_enrollment_photo(client, role_keys, faces_dir, case) -> None:
    before = await audit_event_count(client, role_keys)
    good = [b64(faces_dir / "lfw" / "Hugo_Chavez" / f"Hugo_Chavez_{n:04d}.jpg") for n in (1, 2, 3)]
    body = {"label": "x", "photos": [*good, bad_images(faces_dir)[case]]}
    r = await client.post("/v1/identities", json=body, headers={"X-API-Key": role_keys["op"]})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] in {"image.invalid", "image.empty", "input.base64_invalid"}
    assert await audit_event_count(client, role_keys) == before


@pytest.mark.parametrize("case", ["text", "truncated", "five_byte_png"])
async def test_bad_reference_image(client, role_keys, faces_dir, case) -> None:
    before = await audit_event_count(client, role_keys)
    body = {
        "subject_id": "idn_x",
        "purpose": "portrait",
        "prompt": "p",
        "references": [bad_images(faces_dir)[case]],
    }
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": role_keys["P"]})
    assert r.status_code in {400, 404}, r.text
    assert r.json()["code"] in {"image.invalid", "identity.not_found"}
    assert await audit_event_count(client, role_keys) == before


async def test_empty_body_and_empty_image(client, role_keys) -> None:
    r = await client.post(
        "/v1/identities",
        content=b"",
        headers={"X-API-Key": role_keys["op"], "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"].startswith("input.")
    r = await client.post(
        "/v1/provenance/verify", json={"image": ""}, headers={"X-API-Key": role_keys["aud"]}
    )
    assert (r.status_code, r.json()["code"]) == (400, "input.invalid")


async def test_unknown_subject(client, role_keys, faces_dir) -> None:
    before = await audit_event_count(client, role_keys)
    body = {"subject_id": "idn_doesnotexist", "purpose": "portrait", "prompt": "a portrait"}
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": role_keys["P"]})
    assert (r.status_code, r.json()["code"]) == (404, "identity.not_found")
    assert await audit_event_count(client, role_keys) == before


async def test_malformed_json_and_unknown_fields(client, role_keys) -> None:
    h = {"X-API-Key": role_keys["P"], "content-type": "application/json"}
    r = await client.post("/v1/generate", content=b'{"subject_id": "idn_x", ', headers=h)
    assert r.status_code == 400 and r.json()["code"] == "input.malformed_json", r.text
    body = {"subject_id": "idn_x", "purpose": "portrait", "prompt": "p", "sneaky": 1}
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": role_keys["P"]})
    assert (r.status_code, r.json()["code"]) == (400, "input.invalid")
    body = {"subject_id": "idn_x", "purpose": "selfie", "prompt": "p"}
    r = await client.post("/v1/generate", json=body, headers={"X-API-Key": role_keys["P"]})
    assert (r.status_code, r.json()["code"]) == (400, "input.invalid")


async def test_missing_and_wrong_keys(client) -> None:
    r = await client.post("/v1/generate", json={})
    assert (r.status_code, r.json()["code"]) == (401, "auth.missing_key")
    r = await client.post("/v1/generate", json={}, headers={"X-API-Key": "csk_wrong"})
    assert (r.status_code, r.json()["code"]) == (401, "auth.invalid_key")


async def test_revoke_unknown_grant_and_grant_to_unknown_identity(client, role_keys) -> None:
    op = {"X-API-Key": role_keys["op"]}
    r = await client.post("/v1/grants/gnt_nope/revoke", headers=op)
    assert (r.status_code, r.json()["code"]) == (404, "grant.not_found")
    grant = {
        "identity_id": "idn_nope",
        "principal": "P",
        "purposes": ["portrait"],
        "attested_by": "op",
        "consent_text_sha256": "0" * 64,
    }
    r = await client.post("/v1/grants", json=grant, headers=op)
    assert (r.status_code, r.json()["code"]) == (404, "identity.not_found")
