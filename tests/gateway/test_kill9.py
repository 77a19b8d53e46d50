"""kill -9 of the gateway in the middle of a generation leaves no image without its audit event.

The gate commits the audit event (with the generation record) before it writes any image file,
and writes each file under a temporary name first. So whatever instant the process dies at, every
file in the outputs folder belongs to a committed record whose release event is in the chain;
after a restart on the same data directory the chain verifies and the gate works again.

The server is the real ``consentry serve`` (one worker, SQLite) in its own process group; the
database is read directly with ``sqlite3`` after the kill, not through the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import b64

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
DEADLINE_S = 60.0  # for the server to load its models and answer /health


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (fields 14 and 15 after the name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``consentry serve`` until it answers /health; killed (the whole group) on the way out."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consentry.gateway.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    assert proc.stderr is not None  # stderr=PIPE
    try:
        end = time.monotonic() + DEADLINE_S
        while True:
            assert proc.poll() is None, f"server exited: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < end, "server did not answer /health in time"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()


def released_files_are_audited(db_path: Path, outputs: Path) -> int:
    """Assert that each file in ``outputs`` names a generation record whose release event is in
    the audit table; return how many files there were."""
    con = sqlite3.connect(db_path)
    try:
        records = {rid: seq for rid, seq in con.execute("SELECT id, audit_seq FROM generation_records")}
        events = {seq: (kind, json.loads(body)) for seq, kind, body in con.execute(
            "SELECT seq, kind, body FROM audit_events"
        )}  # fmt: skip
    finally:
        con.close()
    files = sorted(outputs.iterdir()) if outputs.is_dir() else []
    for f in files:
        record_id = f.name.rsplit("_", 1)[0]  # gen_<hex>_<n>.png (or .tmp while being written)
        assert record_id in records, f"{f.name} has no generation record"
        kind, body = events[records[record_id]]
        assert (kind, body["request_id"]) == ("generation.released", record_id), f.name
    return len(files)


def audit_kinds(db_path: Path) -> list[str]:
    con = sqlite3.connect(db_path)
    try:
        return [kind for (kind,) in con.execute("SELECT kind FROM audit_events ORDER BY seq")]
    finally:
        con.close()


def test_kill9_mid_generation_leaves_no_unaudited_image(
    tmp_path: Path, tiny_model: Path, dev_keys: Path, faces_dir: Path
) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CONSENTRY_DATA_DIR": str(data),
        "CONSENTRY_DATABASE_URL": "",
        "CONSENTRY_MODEL_DIR": str(tiny_model),
        "CONSENTRY_KEYS_DIR": str(dev_keys),
        "CONSENTRY_DEVICE": "cpu",
    }
    keys = asyncio.run(bootstrap(data, tiny_model, dev_keys))
    admin, requester = {"X-API-Key": keys[0]}, {"X-API-Key": keys[1]}
    photos = [b64(faces_dir / "lfw" / "Colin_Powell" / f"Colin_Powell_{n:04d}.jpg") for n in (1, 2, 3)]

    with serve(env, tmp_path) as (proc, url), httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/identities", json={"label": "K", "photos": photos}, headers=admin)
        subject = r.raise_for_status().json()["id"]
        grant = {
            "identity_id": subject,
            "principal": "req",
            "purposes": ["portrait"],
            "attested_by": "t",
            "consent_text_sha256": hashlib.sha256(b"t").hexdigest(),
        }
        client.post("/v1/grants", json=grant, headers=admin).raise_for_status()
        ask = {"subject_id": subject, "purpose": "portrait", "prompt": "a portrait"}
        # One ordinary release first, so that the check below has a real file to account for.
        assert client.post("/v1/generate", json=ask, headers=requester).status_code == 201

        # A slow one (many steps at 512²) in a thread; kill the server once it is busy in it.
        slow = {**ask, "steps": 100, "width": 512, "height": 512}
        answer: list[object] = []
        sender = threading.Thread(target=lambda: answer.append(_post(url, slow, requester)), daemon=True)
        before = cpu_seconds(proc.pid)
        sender.start()
        end = time.monotonic() + 20
        while cpu_seconds(proc.pid) - before < 1.0:  # a second of CPU: past consent, generating
            assert time.monotonic() < end and sender.is_alive(), "the slow request never got busy"
            time.sleep(0.05)
        assert sender.is_alive(), "the slow request finished before the kill; make it slower"
        os.killpg(proc.pid, signal.SIGKILL)
        sender.join(timeout=30)
        assert answer and isinstance(answer[0], httpx.HTTPError), f"expected no answer, got {answer}"

    assert released_files_are_audited(data / "consentry.db", data / "outputs") >= 1
    # The killed request never reached the audit stage, and left nothing half-written in the log.
    assert audit_kinds(data / "consentry.db") == [
        "principal.created",
        "principal.created",
        "identity.enrolled",
        "grant.created",
        "generation.released",
    ]

    with serve(env, tmp_path) as (_, url), httpx.Client(base_url=url, timeout=60) as client:
        done = subprocess.run(
            [sys.executable, "-m", "consentry.gateway.cli", "audit", "verify", "--json"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"] is True
        r = client.post("/v1/generate", json=ask, headers=requester)
        assert r.status_code == 201, r.text
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["audit_events"] == r.json()["audit_seq"]  # the new release heads the chain
    assert released_files_are_audited(data / "consentry.db", data / "outputs") >= 2


def _post(url: str, body: dict[str, object], headers: dict[str, str]) -> object:
    try:
        return httpx.post(f"{url}/v1/generate", json=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        return exc


async def bootstrap(data: Path, tiny_model: Path, dev_keys: Path) -> tuple[str, str]:
    """Create the admin and the requester locally (as ``consentry principal add`` does)."""
    from consentry.gateway.wiring import open_gate
    from consentry.policies.config import Settings

    db = f"sqlite+aiosqlite:///{data / 'consentry.db'}"
    settings = Settings(data_dir=data, database_url=db, model_dir=tiny_model, keys_dir=dev_keys, device="cpu")
    gate = await open_gate(settings)
    try:
        admin = await gate.principals.create("admin", "admin")
        requester = await gate.principals.create("req", "requester")
        return admin.secret, requester.secret
    finally:
        await gate.close()
