"""Several worker processes appending to one audit log at once: the sequence stays gap-free and
the chain verifies, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.provenance.audit_signing import AuditSigner

WORKER = """
import asyncio, sys
from cryptography.hazmat.primitives import serialization
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.provenance.audit_signing import AuditSigner

async def main(url, key_path, worker, n):
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), password=None)
    db = Database(url)
    log = AuditLog(db, AuditSigner(key), checkpoint_every=7)
    await asyncio.gather(*(log.append("load", {"worker": worker, "i": i}) for i in range(n)))
    await db.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""

WORKERS, EACH = 4, 25


async def test_concurrent_processes_keep_the_chain_gap_free(database_url: str, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    key_path = tmp_path / "audit.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    db = Database(database_url)
    await db.migrate()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, database_url, str(key_path), str(w), str(EACH)])
        for w in range(WORKERS)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * WORKERS
    log = AuditLog(db, AuditSigner(key), checkpoint_every=7)
    events = [e async for e in log.events()]
    report = await log.verify()
    await db.dispose()
    assert report.ok, report
    assert [e.seq for e in events] == list(range(1, WORKERS * EACH + 1))
    assert sorted((e.body["worker"], e.body["i"]) for e in events) == [
        (w, i) for w in range(WORKERS) for i in range(EACH)
    ]
