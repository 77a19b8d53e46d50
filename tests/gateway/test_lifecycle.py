"""The consent lifecycle through HTTP, on SQLite and on PostgreSQL (``database_url`` param):
enrollment quality, grant limits, revocation, erasure, API keys."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from consentry.gateway.gate import Gate
from tests.gateway.conftest import AppClient, b64

A, B = "George_W_Bush", "Colin_Powell"


def lfw(faces_dir: Path, person: str, *numbers: int) -> list[str]:
    return [b64(faces_dir / "lfw" / person / f"{person}_{n:04d}.jpg") for n in numbers]


async def setup(client: AppClient) -> dict[str, str]:
    gate: Gate = client.app.state["consentry_gate"]
    admin = (await gate.principals.create("admin", "admin")).secret
    keys = {"admin": admin}
    for name, role in [("op", "operator"), ("P", "requester"), ("aud", "auditor")]:
        r = await client.post(
            "/v1/principals", json={"name": name, "role": role}, headers={"X-API-Key": admin}
        )
        keys[name], keys[f"{name}_id"] = r.json()["api_key"], r.json()["id"]
    return keys


async def enroll(client: AppClient, keys: dict[str, str], photos: list[str]):
    return await client.post(
        "/v1/identities", json={"label": "x", "photos": photos}, headers={"X-API-Key": keys["op"]}
    )


async def grant(client: AppClient, keys: dict[str, str], identity: str, **extra) -> str:
    body = {
        "identity_id": identity,
        "principal": "P",
        "purposes": ["portrait"],
        "attested_by": "op",
        "consent_text_sha256": hashlib.sha256(b"consent v1").hexdigest(),
        **extra,
    }
    r = await client.post("/v1/grants", json=body, headers={"X-API-Key": keys["op"]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def generate(client: AppClient, keys: dict[str, str], identity: str, purpose: str = "portrait"):
    body = {"subject_id": identity, "purpose": purpose, "prompt": "a portrait"}
    return await client.post("/v1/generate", json=body, headers={"X-API-Key": keys["P"]})


async def count(client: AppClient, table: str) -> int:
    gate: Gate = client.app.state["consentry_gate"]
    async with gate.db.session() as session:
        return int((await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_enrollment_quality_rules(db_client: AppClient, faces_dir: Path) -> None:
    keys = await setup(db_client)
    cases = [
        (lfw(faces_dir, A, 1, 2), 400, "enroll.too_few_photos", None),
        ([*lfw(faces_dir, A, 1, 2), b64(faces_dir / "groups" / "011_3.jpg")], 400, "enroll.face_count", 3),
        ([b64(faces_dir / "groups" / "017_0.jpg"), *lfw(faces_dir, A, 1, 2)], 400, "enroll.face_count", 1),
        ([*lfw(faces_dir, A, 1, 2, 3), *lfw(faces_dir, B, 1)], 400, "enroll.inconsistent", 4),
    ]
    for photos, status, code, photo in cases:
        r = await enroll(db_client, keys, photos)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert r.json().get("photo") == photo
    assert await count(db_client, "identities") == 0 and await count(db_client, "templates") == 0

    assert (await enroll(db_client, keys, lfw(faces_dir, A, 1, 2, 3, 4))).status_code == 201
    events = await count(db_client, "audit_events")
    r = await enroll(db_client, keys, lfw(faces_dir, A, 6, 7, 8))
    assert (r.status_code, r.json()["code"]) == (409, "enroll.duplicate_identity")
    assert await count(db_client, "identities") == 1 and await count(db_client, "audit_events") == events


async def test_grant_limits_have_distinct_codes(db_client: AppClient, faces_dir: Path) -> None:
    keys = await setup(db_client)
    identity = (await enroll(db_client, keys, lfw(faces_dir, A, 1, 2, 3))).json()["id"]
    await grant(db_client, keys, identity, max_uses=1)
    assert (await generate(db_client, keys, identity)).status_code == 201
    r = await generate(db_client, keys, identity)
    assert (r.status_code, r.json()["code"]) == (403, "consent.exhausted")
    r = await generate(db_client, keys, identity, purpose="marketing")
    assert r.json()["code"] in {"consent.exhausted", "consent.purpose_not_granted"}

    other = (await enroll(db_client, keys, lfw(faces_dir, B, 1, 2, 3))).json()["id"]
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    await grant(db_client, keys, other, expires_at=soon)
    r = await generate(db_client, keys, other, purpose="marketing")
    assert (r.status_code, r.json()["code"]) == (403, "consent.purpose_not_granted")
    await asyncio.sleep(1.6)
    r = await generate(db_client, keys, other)
    assert (r.status_code, r.json()["code"]) == (403, "consent.expired")

    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    body = {"identity_id": other, "principal": "P", "purposes": ["portrait"], "attested_by": "op"}
    body |= {"consent_text_sha256": "0" * 64, "expires_at": past}
    r = await db_client.post("/v1/grants", json=body, headers={"X-API-Key": keys["op"]})
    assert (r.status_code, r.json()["code"]) == (400, "input.invalid")


async def test_revocation_is_immediate(db_client: AppClient, faces_dir: Path) -> None:
    keys = await setup(db_client)
    identity = (await enroll(db_client, keys, lfw(faces_dir, A, 1, 2, 3))).json()["id"]
    grant_id = await grant(db_client, keys, identity)
    assert (await generate(db_client, keys, identity)).status_code == 201
    r = await db_client.post(f"/v1/grants/{grant_id}/revoke", headers={"X-API-Key": keys["op"]})
    assert r.status_code == 201
    r = await generate(db_client, keys, identity)
    assert (r.status_code, r.json()["code"]) == (403, "consent.revoked")


async def test_erasure_crypto_shreds_templates(
    db_client: AppClient, faces_dir: Path, database_url: str
) -> None:
    keys = await setup(db_client)
    gate: Gate = db_client.app.state["consentry_gate"]
    identity = (await enroll(db_client, keys, lfw(faces_dir, A, 1, 2, 3))).json()["id"]
    await grant(db_client, keys, identity)
    released = (await generate(db_client, keys, identity)).json()

    plain = (await gate.subjects.templates(gate.analyzer.embedder.name)).matrix
    async with gate.db.session() as session:
        wrapped = (await session.execute(text("SELECT data_key FROM identities"))).scalar_one()
        sealed = (await session.execute(text("SELECT ciphertext FROM templates"))).scalars().all()

    def raw_bytes() -> bytes:
        if database_url.startswith("sqlite"):
            path = Path(database_url.split(":///", 1)[1])
            return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        return b"".join(bytes(s) for s in sealed) + bytes(wrapped)

    before = raw_bytes()
    # Before erasure: ciphertext only; no template row (nor any 16-byte run of one) in clear.
    assert all(row[i : i + 4].tobytes() not in before for row in plain for i in range(0, 128, 32))

    r = await db_client.post(f"/v1/identities/{identity}/erase", headers={"X-API-Key": keys["op"]})
    assert r.status_code == 201, r.text
    assert r.json()["templates_destroyed"] == 3 and r.json()["records_flagged"] == 1

    async with gate.db.session() as session:
        row = (await session.execute(text("SELECT status, data_key, label FROM identities"))).one()
    assert row == ("erased", None, "")
    assert await count(db_client, "templates") == 0
    if database_url.startswith("sqlite"):
        after = raw_bytes()
        assert bytes(wrapped) not in after and not any(bytes(s) in after for s in sealed)

    r = await generate(db_client, keys, identity)
    assert (r.status_code, r.json()["code"]) == (403, "consent.subject_inactive")
    r = await db_client.post(
        "/v1/provenance/verify", json={"image": released["images"][0]}, headers={"X-API-Key": keys["aud"]}
    )
    assert r.json()["record"]["subject_erased"] is True
    r = await db_client.post(f"/v1/identities/{identity}/erase", headers={"X-API-Key": keys["op"]})
    assert (r.status_code, r.json()["code"]) == (409, "identity.erased")
    kinds = [e.kind async for e in gate.audit.events()]
    assert "identity.erased" in kinds and (await gate.audit.verify()).ok


async def test_revoked_api_key_fails_at_once(db_client: AppClient) -> None:
    keys = await setup(db_client)
    admin = {"X-API-Key": keys["admin"]}
    r = await db_client.post(f"/v1/principals/{keys['aud_id']}/keys", headers=admin)
    second = r.json()
    assert r.status_code == 201 and second["api_key"] != keys["aud"]
    assert (
        await db_client.get("/v1/audit/verify", headers={"X-API-Key": second["api_key"]})
    ).status_code == 200
    r = await db_client.post(f"/v1/keys/{second['id']}/revoke", headers=admin)
    assert r.status_code == 201
    r = await db_client.get("/v1/audit/verify", headers={"X-API-Key": second["api_key"]})
    assert (r.status_code, r.json()["code"]) == (401, "auth.invalid_key")
    assert (await db_client.get("/v1/audit/verify", headers={"X-API-Key": keys["aud"]})).status_code == 200
    gate: Gate = db_client.app.state["consentry_gate"]
    async with gate.db.session() as session:
        hashes = (await session.execute(text("SELECT key_hash FROM api_keys"))).scalars().all()
    assert not {keys["admin"], keys["aud"], second["api_key"]} & set(hashes)


@pytest.mark.parametrize("role", ["admin", "operator", "requester", "auditor"])
async def test_every_route_checks_its_role(db_client: AppClient, role: str) -> None:
    gate: Gate = db_client.app.state["consentry_gate"]
    key = (await gate.principals.create(f"who-{role}", role)).secret
    h = {"X-API-Key": key}
    grant_body = {
        "identity_id": "idn_none",
        "principal": "nobody",
        "purposes": ["portrait"],
        "attested_by": "x",
        "consent_text_sha256": "0" * 64,
    }
    routes = {
        # route: (method, path, body, roles allowed)
        "create principal": ("POST", "/v1/principals", {"name": f"n-{role}", "role": "auditor"}, {"admin"}),
        "issue key": ("POST", "/v1/principals/prn_none/keys", None, {"admin"}),
        "revoke key": ("POST", "/v1/keys/key_none/revoke", None, {"admin"}),
        "enroll": ("POST", "/v1/identities", {"label": "x", "photos": ["aGVsbG8="]}, {"admin", "operator"}),
        "erase": ("POST", "/v1/identities/idn_none/erase", None, {"admin", "operator"}),
        "grant": ("POST", "/v1/grants", grant_body, {"admin", "operator"}),
        "revoke grant": ("POST", "/v1/grants/gnt_none/revoke", None, {"admin", "operator"}),
        "generate": (
            "POST",
            "/v1/generate",
            {"subject_id": "idn_none", "purpose": "portrait", "prompt": "p"},
            {"requester"},
        ),
        "verify provenance": (
            "POST",
            "/v1/provenance/verify",
            {"image": "aGVsbG8="},
            {"admin", "operator", "requester", "auditor"},
        ),
        "audit verify": ("GET", "/v1/audit/verify", None, {"admin", "auditor"}),
    }
    for name, (method, path, body, allowed) in routes.items():
        r = await db_client.request(method, path, json=body, headers=h)
        if role in allowed:
            assert r.status_code != 403, f"{role} refused on {name}: {r.text}"
            assert r.status_code < 500, f"{name}: {r.text}"
        else:
            assert (r.status_code, r.json()["code"]) == (403, "auth.forbidden"), f"{role} on {name}: {r.text}"
