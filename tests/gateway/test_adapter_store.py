"""Adapter storage on SQLite and PostgreSQL: weights sealed under the identity's data key, never
in the database or in clear on disk; fail-closed training jobs; erasure and revocation take the
adapters (and kept photos) with them; the audit chain stays whole; migration 0003 -> 0004."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Connection

from consentry.gateway.storage.adapters import Adapters, AdapterView
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import MIGRATIONS, Database
from consentry.gateway.storage.principals import Principals
from consentry.gateway.storage.subjects import Subjects
from consentry.gateway.storage.tables import Adapter, Base, Grant
from consentry.gateway.storage.vault import TemplateVault
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConflictError, NotFoundError, RefusedError, StageError
from consentry.provenance.audit_signing import AuditSigner

HEADER = json.dumps({"lora_unet_down.weight": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}})
WEIGHTS = struct.pack("<Q", len(HEADER)) + HEADER.encode() + secrets.token_bytes(4096)
"""Arbitrary bytes shaped like a safetensors file (8-byte header length, JSON header, data)."""
PHOTOS = [b"\xff\xd8photo-one" + secrets.token_bytes(512), b"\xff\xd8photo-two" + secrets.token_bytes(512)]
STALE = 60.0


@dataclass
class World:
    db: Database
    audit: AuditLog
    vault: TemplateVault
    subjects: Subjects
    adapters: Adapters
    adapters_dir: Path
    principal_id: str
    identity_id: str
    grant_id: str

    async def start(self, **overrides: Any) -> AdapterView:
        params: dict[str, Any] = {
            "identity_id": self.identity_id,
            "grant_id": self.grant_id,
            "principal_id": self.principal_id,
            "steps": 100,
            "rank": 4,
            "prior_images": 8,
            "photos_source": "enrollment",
            "photos": len(PHOTOS),
            "actor": self.principal_id,
            "stale_after_s": STALE,
        }
        return await self.adapters.start(**(params | overrides))

    async def trained(self) -> AdapterView:
        job = await self.start()
        assert await self.adapters.progress(job.id, 50, 0.25)
        return await self.adapters.finish(job.id, WEIGHTS, {"seconds": 1.5})

    async def grant(self, **overrides: Any) -> str:
        params: dict[str, Any] = {
            "identity_id": self.identity_id,
            "principal_id": self.principal_id,
            "purposes": ["adapter_training"],
            "deny_terms": [],
            "expires_at": None,
            "max_uses": None,
            "evidence": {"attested_by": "op"},
            "actor": "op",
            "use_enrollment_photos": True,
        }
        return (await self.subjects.grant(**(params | overrides))).id

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.db.session() as session, session.begin():
            result = await session.execute(text(statement), params)
            return list(result.all()) if statement.startswith("SELECT") else []

    async def update(self, table: type[Adapter | Grant], row_id: str, **values: Any) -> None:
        # Through the ORM, so that timestamps are stored as the columns' type stores them.
        async with self.db.session() as session, session.begin():
            await session.execute(update(table).where(table.id == row_id).values(**values))

    def files(self) -> list[str]:
        return sorted(p.name for p in self.adapters_dir.iterdir()) if self.adapters_dir.exists() else []

    async def kinds(self) -> list[str]:
        return [e.kind async for e in self.audit.events()]

    async def bodies(self, kind: str) -> list[dict[str, Any]]:
        return [e.body async for e in self.audit.events() if e.kind == kind]


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    db = Database(database_url)
    await db.migrate()
    audit = AuditLog(db, AuditSigner(Ed25519PrivateKey.generate()), checkpoint_every=5)
    vault = TemplateVault(b"k" * 32)
    adapters_dir = tmp_path / "adapters"
    subjects = Subjects(db, vault, audit, adapters_dir)
    principal = (await Principals(db, audit).create("trainer", "requester")).principal
    emb = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    identity = await subjects.enroll("alice", emb, "test", actor="op", details={}, photos=PHOTOS)
    w = World(
        db,
        audit,
        vault,
        subjects,
        Adapters(db, vault, audit, adapters_dir),
        adapters_dir,
        principal.id,
        identity.id,
        "",
    )
    w.grant_id = await w.grant()
    yield w
    report = await audit.verify()
    assert report.ok, report.problem
    await db.dispose()


async def test_weights_sealed_at_rest_and_round_trip(world: World, database_url: str, tmp_path: Path) -> None:
    ready = await world.trained()
    assert (ready.status, ready.steps_done, ready.loss, ready.photos_source) == (
        "ready",
        50,
        0.25,
        "enrollment",
    )
    assert ready.finished_at is not None and ready.id.startswith("adp_") and len(ready.id) == 20
    json.dumps(ready.as_dict())
    path = world.adapters_dir / f"{ready.id}.lora.enc"
    assert world.files() == [path.name] and (path.stat().st_mode & 0o777) == 0o600
    on_disk = path.read_bytes()
    assert ready.weights_sha256 == hashlib.sha256(on_disk).hexdigest()
    assert WEIGHTS not in on_disk and HEADER.encode()[:16] not in on_disk and b"lora_unet" not in on_disk
    assert WEIGHTS[-64:] not in on_disk and WEIGHTS[:8] != on_disk[:8]

    [row] = await world.sql("SELECT * FROM adapters")
    assert not any(isinstance(v, bytes | memoryview) for v in row)  # the row holds no blob at all
    if database_url.startswith("sqlite"):
        db_path = Path(database_url.split(":///", 1)[1])
        raw = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
        assert WEIGHTS[-64:] not in raw and b"lora_unet" not in raw

    assert await world.adapters.open_weights(ready.id) == WEIGHTS
    assert await world.adapters.latest_ready(world.identity_id) == ready == await world.adapters.get(ready.id)
    assert await world.adapters.list(world.identity_id) == [ready] == await world.adapters.list()
    assert (
        await world.adapters.list("idn_nobody") == [] and await world.adapters.latest_ready("idn_x") is None
    )
    assert not await world.adapters.progress(ready.id, 99, 0.1)  # a ready adapter takes no heartbeat
    with pytest.raises(NotFoundError) as info:
        await world.adapters.get("adp_0000000000000000")
    assert info.value.code == codes.ADAPTER_NOT_FOUND
    [trained] = await world.bodies("adapter.trained")
    assert trained["weights_sha256"] == ready.weights_sha256 and trained["seconds"] == 1.5
    assert "adapter.training_started" in await world.kinds()


async def test_erase_deletes_adapters_and_photos_and_shreds_copies(world: World, tmp_path: Path) -> None:
    assert await world.subjects.enrollment_photos(world.identity_id) == PHOTOS
    ready = await world.trained()
    copy = (world.adapters_dir / f"{ready.id}.lora.enc").read_bytes()
    [(wrapped,)] = await world.sql("SELECT data_key FROM identities")
    counts = await world.subjects.erase(world.identity_id, actor="op")
    assert counts["adapters_deleted"] == 1 and counts["photos_deleted"] == len(PHOTOS)
    assert counts["templates_destroyed"] == 3 and counts["grants_revoked"] == 1
    [body] = await world.bodies("identity.erased")
    assert (body["adapters_deleted"], body["photos_deleted"]) == (1, len(PHOTOS))

    assert world.files() == []
    assert await world.sql("SELECT id FROM adapters") == []
    assert await world.sql("SELECT id FROM enrollment_photos") == []
    assert await world.sql("SELECT data_key FROM identities") == [(None,)]
    with pytest.raises(NotFoundError):
        await world.adapters.open_weights(ready.id)
    with pytest.raises(ConflictError) as info:
        await world.subjects.enrollment_photos(world.identity_id)
    assert info.value.code == codes.IDENTITY_ERASED
    # The copy: no key left in the database opens it, nor a fresh key for the same identity id.
    keys = [k for (k,) in await world.sql("SELECT data_key FROM identities") if k is not None]
    for key in [*keys, world.vault.new_data_key(world.identity_id)]:
        with pytest.raises(InvalidTag):
            world.vault.open_bytes(world.identity_id, bytes(key), copy, ready.id)
    # Only the destroyed key ever opened it (so the test above means something).
    assert world.vault.open_bytes(world.identity_id, bytes(wrapped), copy, ready.id) == WEIGHTS


async def test_revoking_the_training_grant_deletes_its_adapters(world: World) -> None:
    ready = await world.trained()
    portrait = await world.grant(purposes=["portrait"], use_enrollment_photos=False)
    assert await world.subjects.revoke(portrait, actor="op") == {"adapters_deleted": 0}
    assert await world.adapters.get(ready.id) == ready
    assert await world.subjects.revoke(world.grant_id, actor="op") == {"adapters_deleted": 1}
    assert world.files() == [] and await world.adapters.list() == []
    bodies = await world.bodies("grant.revoked")
    assert [b["adapters_deleted"] for b in bodies] == [0, 1]
    with pytest.raises(NotFoundError):
        await world.subjects.revoke(world.grant_id, actor="op")
    with pytest.raises(RefusedError) as info:
        await world.start()
    assert info.value.code == codes.CONSENT_REVOKED


async def test_one_training_job_per_identity_and_stale_ones_are_interrupted(world: World) -> None:
    first = await world.start()
    with pytest.raises(ConflictError) as info:
        await world.start()
    assert info.value.code == codes.ADAPTER_TRAINING_BUSY
    assert await world.adapters.mark_interrupted(STALE) == 0  # its heartbeat is fresh
    old = datetime.now(UTC) - timedelta(hours=1)
    await world.update(Adapter, first.id, updated_at=old)
    second = await world.start()  # a stale job does not block
    # Debris of a crash: an orphan file no row owns, and an old temp file of a cut-short write.
    world.adapters_dir.mkdir(exist_ok=True)
    orphan, temp = world.adapters_dir / "adp_dead.lora.enc", world.adapters_dir / ".adp_x.123.tmp"
    orphan.write_bytes(b"x")
    temp.write_bytes(b"x")
    os.utime(temp, (0, 0))
    assert await world.adapters.mark_interrupted(STALE) == 1
    assert world.files() == []
    failed = await world.adapters.get(first.id)
    assert (failed.status, failed.error_code) == ("failed", codes.ADAPTER_INTERRUPTED)
    assert (await world.adapters.get(second.id)).status == "training"
    assert not await world.adapters.progress(first.id, 10, 1.0)
    with pytest.raises(ConflictError) as info:
        await world.adapters.finish(first.id, WEIGHTS, {})
    assert info.value.code == codes.ADAPTER_INTERRUPTED and world.files() == []
    [body] = await world.bodies("adapter.training_failed")
    assert (body["adapter_id"], body["code"]) == (first.id, codes.ADAPTER_INTERRUPTED)


async def test_finish_after_revocation_or_erasure_leaves_nothing(world: World) -> None:
    job = await world.start()
    await world.subjects.revoke(world.grant_id, actor="op")
    with pytest.raises(ConflictError) as info:
        await world.adapters.finish(job.id, WEIGHTS, {})
    assert info.value.code == codes.ADAPTER_TRAINING_FAILED
    assert world.files() == [] and await world.adapters.list() == []

    world.grant_id = await world.grant()
    job = await world.start()
    await world.subjects.erase(world.identity_id, actor="op")
    with pytest.raises(ConflictError):
        await world.adapters.finish(job.id, WEIGHTS, {})
    assert world.files() == [] and await world.adapters.list() == []
    assert "adapter.trained" not in await world.kinds()


class RaceAudit:
    """Runs ``before`` (a competing change) just before the wrapped append's transaction."""

    def __init__(self, audit: AuditLog, before: Callable[[], Any]) -> None:
        self.audit, self.before = audit, before

    async def append(self, kind: str, body: dict[str, Any], also: Any = None) -> Any:
        if kind == "adapter.trained":
            await self.before()
        return await self.audit.append(kind, body, also=also)


@pytest.mark.parametrize("race", ["revoke", "erase", "expire"])
async def test_finish_rechecks_inside_its_transaction(world: World, race: str) -> None:
    job = await world.start()

    async def competing() -> None:
        assert world.files() == [f"{job.id}.lora.enc"]  # the file is written, not yet committed
        if race == "revoke":
            await world.subjects.revoke(world.grant_id, actor="op")
        elif race == "erase":
            await world.subjects.erase(world.identity_id, actor="op")
        else:
            past = datetime.now(UTC) - timedelta(seconds=1)
            await world.update(Grant, world.grant_id, expires_at=past)

    world.adapters.audit = RaceAudit(world.audit, competing)  # type: ignore[assignment]
    with pytest.raises((ConflictError, RefusedError)) as info:
        await world.adapters.finish(job.id, WEIGHTS, {})
    world.adapters.audit = world.audit
    assert world.files() == [] and "adapter.trained" not in await world.kinds()
    if race == "expire":
        assert info.value.code == codes.CONSENT_EXPIRED
        failed = await world.adapters.get(job.id)
        assert (failed.status, failed.error_code) == ("failed", codes.ADAPTER_TRAINING_FAILED)
        assert failed.error is not None and "expired" in failed.error
    else:
        assert await world.adapters.list() == []


async def test_erase_counts_are_true_when_it_commits(world: World) -> None:
    """A training job started between erase's first count and its transaction is counted too."""
    started: list[AdapterView] = []

    class StartFirst:
        async def append(self, kind: str, body: dict[str, Any], also: Any = None) -> Any:
            if kind == "identity.erased" and not started:
                started.append(await world.start())
            return await world.audit.append(kind, body, also=also)

    world.subjects.audit = StartFirst()  # type: ignore[assignment]
    counts = await world.subjects.erase(world.identity_id, actor="op")
    world.subjects.audit = world.audit
    assert counts["adapters_deleted"] == 1 and started and await world.adapters.list() == []
    [body] = await world.bodies("identity.erased")
    assert body["adapters_deleted"] == 1


async def test_a_failed_commit_leaves_no_file(world: World) -> None:
    job = await world.start()

    async def broken() -> None:
        raise RuntimeError("database went away")

    world.adapters.audit = RaceAudit(world.audit, broken)  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        await world.adapters.finish(job.id, WEIGHTS, {})
    world.adapters.audit = world.audit
    assert world.files() == [] and (await world.adapters.get(job.id)).status == "training"


async def test_tampered_missing_or_swapped_files_are_unreadable(world: World) -> None:
    ready = await world.trained()
    path = world.adapters_dir / f"{ready.id}.lora.enc"
    good = path.read_bytes()

    async def unreadable() -> None:
        with pytest.raises(StageError) as info:
            await world.adapters.open_weights(ready.id)
        assert info.value.code == codes.ADAPTER_UNREADABLE

    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    await unreadable()
    # A flipped byte with a matching hash (someone edited the row too): the AES-GCM tag refuses it.
    flipped = good[:40] + bytes([good[40] ^ 1]) + good[41:]
    path.write_bytes(flipped)
    digest = hashlib.sha256(flipped).hexdigest()
    await world.sql("UPDATE adapters SET weights_sha256 = :h WHERE id = :i", h=digest, i=ready.id)
    await unreadable()
    # Another adapter's file (same identity) under this adapter's name: bound to its own id.
    other = await world.trained()
    other_file = (world.adapters_dir / f"{other.id}.lora.enc").read_bytes()
    path.write_bytes(other_file)
    digest = hashlib.sha256(other_file).hexdigest()
    await world.sql("UPDATE adapters SET weights_sha256 = :h WHERE id = :i", h=digest, i=ready.id)
    await unreadable()
    path.unlink()
    await unreadable()
    assert await world.adapters.open_weights(other.id) == WEIGHTS


async def test_kept_photos_and_grant_flag(world: World) -> None:
    assert await world.subjects.enrollment_photos(world.identity_id) == PHOTOS
    rows = await world.sql("SELECT ciphertext, sha256 FROM enrollment_photos ORDER BY id")
    assert [h for _, h in rows] == [hashlib.sha256(p).hexdigest() for p in PHOTOS]
    assert not any(p[2:40] in bytes(c) for c, _ in rows for p in PHOTOS)
    [enrolled] = await world.bodies("identity.enrolled")
    assert enrolled["photos_kept"] == len(PHOTOS)
    # Swapped ciphertexts between two rows: each is bound to its own photo's hash.
    _, (c2, _) = rows
    await world.sql(
        "UPDATE enrollment_photos SET ciphertext = :c WHERE sha256 = :h", c=bytes(c2), h=rows[0][1]
    )
    with pytest.raises(StageError):
        await world.subjects.enrollment_photos(world.identity_id)

    [terms] = await world.subjects.grants_for(world.identity_id, world.principal_id)
    assert terms.use_enrollment_photos and terms.purposes == ("adapter_training",)
    with pytest.raises(BadInputError) as info:
        await world.grant(purposes=["portrait"])
    assert info.value.code == codes.GRANT_PURPOSE_INVALID
    world.grant_id = await world.grant(use_enrollment_photos=False)
    with pytest.raises(RefusedError) as refused:
        await world.start()
    assert refused.value.code == codes.ADAPTER_PHOTOS_REQUIRED
    assert (await world.start(photos_source="request", photos=5)).photos_source == "request"
    with pytest.raises(BadInputError) as bad:
        await world.start(photos_source="elsewhere")
    assert bad.value.code == codes.ADAPTER_INVALID_PARAMS
    with pytest.raises(NotFoundError):
        await world.start(identity_id="idn_0000000000000000")


async def test_fail_and_delete(world: World) -> None:
    job = await world.start()
    failed = await world.adapters.fail(job.id, codes.ADAPTER_TRAINING_FAILED, "out of memory")
    assert (failed.status, failed.error) == ("failed", "out of memory")
    assert await world.adapters.fail(job.id, codes.ADAPTER_TRAINING_FAILED, "again") == failed
    ready = await world.trained()
    with pytest.raises(ConflictError):
        await world.adapters.fail(ready.id, codes.ADAPTER_TRAINING_FAILED, "late")
    await world.adapters.delete(ready.id, actor="op")
    assert world.files() == [] and [a.id for a in await world.adapters.list()] == [job.id]
    with pytest.raises(NotFoundError):
        await world.adapters.delete(ready.id, actor="op")
    [deleted] = await world.bodies("adapter.deleted")
    assert deleted == {"adapter_id": ready.id, "identity_id": world.identity_id, "actor": "op"}


async def _alembic(db: Database, run: Callable[[Config], None]) -> None:
    def go(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        run(config)

    async with db.engine.begin() as conn:
        await conn.run_sync(go)


async def _schema(db: Database) -> dict[str, set[str]]:
    def read(connection: Connection) -> dict[str, set[str]]:
        found = inspect(connection)
        return {t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names()}

    async with db.engine.connect() as conn:
        return await conn.run_sync(read)


async def test_migration_0003_to_0004_and_back(database_url: str) -> None:
    db = Database(database_url)
    await _alembic(db, lambda c: command.upgrade(c, "0003"))
    now = datetime.now(UTC)
    async with db.session() as session, session.begin():
        inserts: list[tuple[str, dict[str, Any]]] = [
            ("INSERT INTO principals VALUES ('prn_1', 'p', 'requester', :t)", {}),
            ("INSERT INTO identities VALUES ('idn_1', 'a', 'active', :k, :t, NULL)", {"k": b"key"}),
            (
                "INSERT INTO grants VALUES ('gnt_1', 'idn_1', 'prn_1', '[\"portrait\"]', '[]',"
                " NULL, NULL, 0, '{}', :t, NULL)",
                {},
            ),
            # A record pointing at the grant: rebuilding ``grants`` (batch mode) would break it.
            (
                "INSERT INTO generation_records VALUES ('rec_1', 'ab', 'prn_1', 'idn_1', 'gnt_1', :h,"
                " 'm', false, '{}', '[]', 1, false, :t)",
                {"h": "0" * 64},
            ),
        ]
        for statement, params in inserts:
            await session.execute(text(statement), {"t": now, **params})
    assert "adapters" not in await _schema(db)
    await db.migrate()
    schema = await _schema(db)
    assert {"adapters", "enrollment_photos"} <= schema.keys() and "use_enrollment_photos" in schema["grants"]
    async with db.session() as session:
        flag = (await session.execute(text("SELECT use_enrollment_photos FROM grants"))).scalar_one()
    assert flag in (False, 0)  # the server default for grants made before 0004

    def differences(connection: Connection) -> list[Any]:
        options = {"compare_type": True, "compare_server_default": True}
        return compare_metadata(MigrationContext.configure(connection, opts=options), Base.metadata)

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []  # the migrations mirror tables.py exactly

    await _alembic(db, lambda c: command.downgrade(c, "0003"))
    schema = await _schema(db)
    assert not {"adapters", "enrollment_photos"} & schema.keys()
    assert "use_enrollment_photos" not in schema["grants"]
    async with db.session() as session:
        assert (await session.execute(text("SELECT id FROM grants"))).scalars().all() == ["gnt_1"]
    await db.migrate()
    assert "adapters" in await _schema(db)
    await db.dispose()
