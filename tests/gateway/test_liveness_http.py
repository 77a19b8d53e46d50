"""Self-enrollment over HTTP, through the real app (real models, SQLite, the default policy):
POST /v1/enrollments/challenges, then POST /v1/identities with the answer; a replay and a
half-given answer get problem+json with their codes. The challenge's poses are random here, so
the answer picks, for each pose asked, Hugo Chavez's LFW photo that shows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consentry.policies import codes
from tests.gateway.conftest import AppClient, b64

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

POSE_PHOTOS = {"left": 3, "front": 10, "right": 6}  # measured yaw +39.6, -4.0, -24.4 degrees


def chavez(faces_dir: Path, n: int) -> str:
    return b64(faces_dir / "lfw" / "Hugo_Chavez" / f"Hugo_Chavez_{n:04d}.jpg")


async def test_self_enrollment_over_http(
    client: AppClient, role_keys: dict[str, str], faces_dir: Path
) -> None:
    op, requester = {"X-API-Key": role_keys["op"]}, {"X-API-Key": role_keys["P"]}
    assert (await client.post("/v1/enrollments/challenges", headers=requester)).status_code == 403
    r = await client.post("/v1/enrollments/challenges", headers=op)
    assert r.status_code == 201, r.text
    challenge = r.json()
    assert challenge["challenge_id"].startswith("chl_") and len(challenge["nonce"]) >= 40
    assert sorted(challenge["poses"]) == ["front", "left", "right"]
    expires = datetime.fromisoformat(challenge["expires_at"])
    assert timedelta(seconds=100) < expires - datetime.now(UTC) <= timedelta(seconds=120)
    body = {
        "label": "Hugo",
        "photos": [chavez(faces_dir, n) for n in (1, 2, 4, 5)],
        "challenge_id": challenge["challenge_id"],
        "nonce": challenge["nonce"],
        "frames": [chavez(faces_dir, POSE_PHOTOS[pose]) for pose in challenge["poses"]],
    }
    r = await client.post("/v1/identities", json=body, headers=op)
    assert r.status_code == 201, r.text
    assert r.json()["attestation"] == "self_attested_with_liveness"
    # The same answer again: a replay, refused as problem+json with its code, audited.
    replay = await client.post("/v1/identities", json=body, headers=op)
    assert replay.status_code == 403 and replay.headers["content-type"].startswith("application/problem+json")
    assert replay.json()["code"] == codes.LIVENESS_REPLAYED and replay.json()["audit_seq"] > 0
    # Half an answer is bad input.
    half = {k: v for k, v in body.items() if k != "nonce"}
    r = await client.post("/v1/identities", json=half, headers=op)
    assert r.status_code == 400 and r.json()["code"] == codes.INPUT_INVALID
    # An operator-attested enrollment still answers with its attestation.
    plain = {
        "label": "Arnold",
        "photos": [
            b64(faces_dir / "lfw" / "Arnold_Schwarzenegger" / f"Arnold_Schwarzenegger_{n:04d}.jpg")
            for n in (3, 4, 6)
        ],
    }
    r = await client.post("/v1/identities", json=plain, headers=op)
    assert r.status_code == 201 and r.json()["attestation"] == "operator_attested"
