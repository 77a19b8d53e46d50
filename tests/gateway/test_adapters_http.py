"""The adapter routes over HTTP, with the real face models and the tiny pipeline: every bad input
is a 4xx problem+json with a stable code, refusals are audited, nothing else is stored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.gateway.conftest import audit_event_count, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")
GRANT = {"attested_by": "test", "consent_text_sha256": "0" * 64}


def lfw(faces_dir: Path, person: str, n: int) -> str:
    return b64(faces_dir / "lfw" / person / f"{person}_{n:04d}.jpg")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def people(client: Any, role_keys: dict[str, str], faces_dir: Path) -> dict[str, str]:
    op = {"X-API-Key": role_keys["op"]}
    ids = {}
    for person in ("Hugo_Chavez", "Arnold_Schwarzenegger"):
        body = {"label": person, "photos": [lfw(faces_dir, person, n) for n in (1, 2, 3)]}
        r = await client.post("/v1/identities", json=body, headers=op)
        assert r.status_code == 201, r.text
        ids[person] = r.json()["id"]
    grant = {"identity_id": ids["Hugo_Chavez"], "principal": "P", "purposes": ["adapter_training"], **GRANT}
    assert (await client.post("/v1/grants", json=grant, headers=op)).status_code == 201
    return ids


async def problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def test_unknown_identity_and_adapter(client: Any, role_keys: dict[str, str]) -> None:
    p = {"X-API-Key": role_keys["P"]}
    await problem(
        await client.post("/v1/identities/idn_nope/adapters", json={}, headers=p), 404, "identity.not_found"
    )
    await problem(await client.get("/v1/adapters/adp_nope", headers=p), 404, "adapter.not_found")
    await problem(
        await client.delete("/v1/adapters/adp_nope", headers={"X-API-Key": role_keys["op"]}),
        404,
        "adapter.not_found",
    )
    await problem(await client.delete("/v1/adapters/adp_nope", headers=p), 403, "auth.forbidden")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"steps": 0}, "adapter.invalid_params"),
        ({"rank": 65}, "adapter.invalid_params"),
        ({}, "adapter.photos_required"),
    ],
)
async def test_bad_training_parameters_store_nothing(
    client: Any, role_keys: dict[str, str], people: dict[str, str], body: dict[str, Any], code: str
) -> None:
    before = await audit_event_count(client, role_keys)
    path = f"/v1/identities/{people['Hugo_Chavez']}/adapters"
    await problem(await client.post(path, json=body, headers={"X-API-Key": role_keys["P"]}), 400, code)
    assert await audit_event_count(client, role_keys) == before


async def test_training_without_the_grant_and_with_someone_elses_photo_is_refused_and_audited(
    client: Any, role_keys: dict[str, str], people: dict[str, str], faces_dir: Path
) -> None:
    p = {"X-API-Key": role_keys["P"]}
    before = await audit_event_count(client, role_keys)
    arnold = f"/v1/identities/{people['Arnold_Schwarzenegger']}/adapters"
    photo = {"photos": [lfw(faces_dir, "Arnold_Schwarzenegger", 4)]}
    await problem(await client.post(arnold, json=photo, headers=p), 403, "consent.missing")
    hugo = f"/v1/identities/{people['Hugo_Chavez']}/adapters"
    await problem(await client.post(hugo, json=photo, headers=p), 403, "face.protected_identity")
    assert await audit_event_count(client, role_keys) == before + 2
    listed = await client.get("/v1/adapters", headers={"X-API-Key": role_keys["op"]})
    assert listed.json() == {"adapters": []}


async def test_a_second_training_while_one_runs_is_a_conflict(
    client: Any, role_keys: dict[str, str], people: dict[str, str], faces_dir: Path
) -> None:
    p, op = {"X-API-Key": role_keys["P"]}, {"X-API-Key": role_keys["op"]}
    hugo = f"/v1/identities/{people['Hugo_Chavez']}/adapters"
    body = {"photos": [lfw(faces_dir, "Hugo_Chavez", 4)], "steps": 2000, "prior_images": 0}
    first = await client.post(hugo, json=body, headers=p)
    assert first.status_code == 202 and first.json()["status"] == "training"
    await problem(await client.post(hugo, json=body | {"steps": 2}, headers=p), 409, "adapter.training_busy")
    # Deleting the job's adapter stops the training: it never becomes an adapter.
    assert (await client.delete(f"/v1/adapters/{first.json()['id']}", headers=op)).status_code == 200
    for _ in range(100):
        again = await client.post(hugo, json=body | {"steps": 2}, headers=p)
        if again.status_code != 409:
            break
        await asyncio.sleep(0.2)
    assert again.status_code == 202, again.text
    adapter = again.json()["id"]
    for _ in range(300):
        shown = (await client.get(f"/v1/adapters/{adapter}", headers=p)).json()
        if shown["status"] != "training":
            break
        await asyncio.sleep(0.1)
    assert (shown["status"], shown["steps_done"]) == ("ready", 2)


async def test_bad_generation_personalization_is_a_clear_400(
    client: Any, role_keys: dict[str, str], people: dict[str, str], faces_dir: Path
) -> None:
    p = {"X-API-Key": role_keys["P"]}
    before = await audit_event_count(client, role_keys)
    body = {
        "subject_id": people["Hugo_Chavez"],
        "purpose": "portrait",
        "prompt": "a portrait",
        "mode": "img2img",
        "references": [lfw(faces_dir, "Hugo_Chavez", 5)],
    }
    for strength in (0, -0.5, 1.5):
        r = await client.post("/v1/generate", json=body | {"strength": strength}, headers=p)
        await problem(r, 400, "generation.strength_invalid")
    r = await client.post("/v1/generate", json=body | {"references": []}, headers=p)
    await problem(r, 400, "generation.reference_required")
    r = await client.post("/v1/generate", json=body | {"mode": "ip_adapter"}, headers=p)
    await problem(r, 400, "generation.mode_unavailable")  # no IP-Adapter weights configured
    r = await client.post("/v1/generate", json=body | {"purpose": "adapter_training"}, headers=p)
    await problem(r, 400, "input.purpose_invalid")
    assert await audit_event_count(client, role_keys) == before


async def test_an_erased_identity_cannot_be_trained(
    client: Any, role_keys: dict[str, str], people: dict[str, str], faces_dir: Path
) -> None:
    op, p = {"X-API-Key": role_keys["op"]}, {"X-API-Key": role_keys["P"]}
    arnold = people["Arnold_Schwarzenegger"]
    assert (await client.post(f"/v1/identities/{arnold}/erase", headers=op)).status_code == 201
    body = {"photos": [lfw(faces_dir, "Arnold_Schwarzenegger", 4)]}
    await problem(
        await client.post(f"/v1/identities/{arnold}/adapters", json=body, headers=p), 409, "identity.erased"
    )
    gen = {"subject_id": arnold, "purpose": "portrait", "prompt": "p", "adapter": True}
    await problem(await client.post("/v1/generate", json=gen, headers=p), 409, "identity.erased")
