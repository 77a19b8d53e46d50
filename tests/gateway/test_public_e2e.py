"""Public verification end to end with the real gate: real face models, the tiny pipeline, real
photos. A subject's release, stripped of its metadata and re-encoded as JPEG, resolves without a
key to its record and manifest; after the operator revokes the grant over the API the same
questions get a tombstone that names no one."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from consentry.provenance.manifest_store import png_manifest_store
from consentry.provenance.watermark import ALGORITHM
from tests.gateway.conftest import AppClient, b64

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
LABEL = "Gerhard S. (public e2e)"


def stripped_jpeg(released_png: bytes) -> bytes:
    img = Image.open(io.BytesIO(released_png)).convert("RGB")
    buf = io.BytesIO()
    Image.frombytes("RGB", img.size, img.tobytes()).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


async def test_a_stripped_release_resolves_until_consent_is_revoked(
    client: AppClient, admin_key: str, faces_dir: Path
) -> None:
    h = {"X-API-Key": admin_key}
    made = await client.post("/v1/principals", json={"name": "pub-P", "role": "requester"}, headers=h)
    requester = {"X-API-Key": made.json()["api_key"]}
    photos = [
        b64(faces_dir / "lfw" / "Gerhard_Schroeder" / f"Gerhard_Schroeder_{n:04d}.jpg") for n in (1, 2, 3)
    ]
    identity = (
        await client.post("/v1/identities", json={"label": LABEL, "photos": photos}, headers=h)
    ).json()
    grant = {
        "identity_id": identity["id"],
        "principal": "pub-P",
        "purposes": ["avatar"],
        "attested_by": "op",
        "consent_text_sha256": hashlib.sha256(b"c").hexdigest(),
    }
    grant_id = (await client.post("/v1/grants", json=grant, headers=h)).json()["id"]
    body = {
        "subject_id": identity["id"],
        "purpose": "avatar",
        "prompt": "an avatar",
        "width": 512,
        "height": 512,
    }
    released = await client.post("/v1/generate", json=body, headers=requester)
    assert released.status_code == 201, released.text
    out = released.json()
    image = base64.b64decode(out["images"][0])
    manifest_id = f"{out['record_id']}_0"
    copy = stripped_jpeg(image)

    r = await client.post("/v1/matches/byContent", content=copy, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    [match] = r.json()["matches"]
    assert match["manifestId"] == manifest_id and match["status"] == "available"
    manifest = await client.get(f"/v1/manifests/{manifest_id}")
    assert manifest.status_code == 200 and manifest.content == png_manifest_store(image)
    consent_hash = hashlib.sha256(grant_id.encode()).hexdigest()
    assert consent_hash.encode() in manifest.content

    assert (await client.post(f"/v1/grants/{grant_id}/revoke", headers=h)).status_code == 201
    answers = [
        await client.post("/v1/matches/byContent", content=copy, headers={"Content-Type": "image/jpeg"}),
        await client.get("/v1/matches/byBinding", params={"alg": ALGORITHM, "value": out["watermark"]}),
        await client.get(f"/v1/manifests/{manifest_id}"),
        await client.post("/v1/public/verify", content=copy, headers={"Content-Type": "image/jpeg"}),
        await client.post("/v1/public/verify", content=image, headers={"Content-Type": "image/png"}),
    ]
    by_content, by_binding, gone, check, original = answers
    assert by_content.json()["matches"] == [{**match, "status": "revoked"}]
    assert by_binding.json()["matches"] == [{"manifestId": manifest_id, "status": "revoked"}]
    assert gone.status_code == 410 and gone.json()["tombstone"]["recordId"] == out["record_id"]
    assert check.json()["tombstone"]["status"] == "revoked"
    assert (
        original.json()["c2pa"]["state"] == "Trusted" and original.json()["tombstone"]["status"] == "revoked"
    )
    for answer in answers:
        for secret in (identity["id"], LABEL, grant_id, consent_hash):
            assert secret.encode() not in answer.content, (answer.request.url, secret)
