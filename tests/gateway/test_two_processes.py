"""Two gateway processes on one PostgreSQL see each other's revocations at once.

Process 1 is this test's gate (over HTTP, in-process); process 2 is the ``consentry`` command in a
subprocess with the same database and keys. Neither caches grants, so no wait is needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.conftest import AppClient, b64

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def consentry(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consentry.gateway.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_revocations_cross_processes(
    db_client: AppClient, database_url: str, tmp_path: Path, tiny_model: Path, dev_keys: Path, faces_dir: Path
) -> None:
    gate = db_client.app.state["consentry_gate"]
    admin = {"X-API-Key": (await gate.principals.create("admin", "admin")).secret}
    await db_client.post("/v1/principals", json={"name": "P", "role": "requester"}, headers=admin)
    photos = [b64(faces_dir / "lfw" / "Donald_Rumsfeld" / f"Donald_Rumsfeld_{n:04d}.jpg") for n in (1, 2, 3)]
    identity = (
        await db_client.post("/v1/identities", json={"label": "A", "photos": photos}, headers=admin)
    ).json()
    body = {
        "identity_id": identity["id"],
        "principal": "P",
        "purposes": ["portrait"],
        "attested_by": "t",
        "consent_text_sha256": hashlib.sha256(b"t").hexdigest(),
    }
    first = (await db_client.post("/v1/grants", json=body, headers=admin)).json()["id"]
    second = (await db_client.post("/v1/grants", json=body, headers=admin)).json()["id"]

    env = {
        **os.environ,
        "CONSENTRY_DATA_DIR": str(tmp_path / "proc2"),
        "CONSENTRY_DATABASE_URL": database_url,
        "CONSENTRY_MODEL_DIR": str(tiny_model),
        "CONSENTRY_KEYS_DIR": str(dev_keys),
        "CONSENTRY_DEVICE": "cpu",
    }
    ask = [
        "generate",
        "--as",
        "P",
        "--subject",
        identity["id"],
        "--purpose",
        "portrait",
        "--prompt",
        "a portrait",
    ]
    done = consentry(env, *ask)
    assert done.returncode == 0, done.stderr

    # Process 1 revokes one grant; process 2 still has the other. Then process 2 revokes that
    # one and process 1's very next request is refused.
    await db_client.post(f"/v1/grants/{first}/revoke", headers=admin)
    assert consentry(env, *ask).returncode == 0
    done = consentry(env, "revoke", second)
    assert done.returncode == 0, done.stderr
    key = (
        await db_client.post(
            "/v1/principals/" + (await gate.principals.by_name("P")).id + "/keys", headers=admin
        )
    ).json()
    r = await db_client.post(
        "/v1/generate",
        json={"subject_id": identity["id"], "purpose": "portrait", "prompt": "a portrait"},
        headers={"X-API-Key": key["api_key"]},
    )
    assert (r.status_code, r.json()["code"]) == (403, "consent.revoked")
    done = consentry(env, *ask)
    assert done.returncode == 3 and "consent.revoked" in done.stderr
    assert (await gate.audit.verify()).ok
