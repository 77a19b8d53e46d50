"""Appending to and reading the hash-chained audit table.

Appends are serialised: an in-process lock, plus a database-level one so that several gateway
processes on one database still produce a gap-free sequence (PostgreSQL: a transaction-scoped
advisory lock; SQLite: taking the write lock first with a no-op write). Each append runs in the
caller's unit of work, so an audit event and the rows it speaks for commit together or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_index import indexed_columns
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import AuditCheckpoint, AuditEvent, AuditHead
from consentry.policies import codes
from consentry.policies.errors import StageError
from consentry.provenance.audit import (
    GENESIS,
    ChainedEvent,
    ChainReport,
    SignedPoint,
    seal,
    verify_signed_log,
)
from consentry.provenance.audit_signing import AuditSigner

ADVISORY_KEY = 0x636F6E73  # "cons"
RETRIES = 5

HEAD = select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)

UnitOfWork = Callable[[AsyncSession, ChainedEvent], Awaitable[None]]


class AuditLog:
    def __init__(
        self,
        db: Database,
        signer: AuditSigner,
        checkpoint_every: int = 100,
        observe: Callable[[float], None] | None = None,
        policy_version: str | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.db = db
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.observe = observe
        """Called with each committed append's duration in seconds (the metrics histogram)."""
        self.policy_version = policy_version
        """The policy file's version, written into every event's body (None: not recorded)."""
        self._lock = asyncio.Lock()

    async def _take_write_lock(self, session: AsyncSession) -> None:
        if self.db.is_sqlite:
            await session.execute(text("UPDATE audit_events SET seq = seq WHERE 0 = 1"))
        else:
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_KEY})

    async def append(self, kind: str, body: dict[str, Any], also: UnitOfWork | None = None) -> ChainedEvent:
        """Append one event; ``also`` writes the rows it speaks for in the same transaction.

        Only a clash on the event's own sequence number is retried; an error raised by ``also``
        (including an IntegrityError of its rows) rolls everything back and reaches the caller.
        """
        start = time.perf_counter()
        async with self._lock:
            for _ in range(RETRIES):
                async with self.db.session() as session, session.begin():
                    event = await self._add_event(session, kind, body)
                    if event is None:
                        await session.rollback()
                        continue
                    await self._sign(session, event)
                    if also is not None:
                        await also(session, event)
                if self.observe is not None:
                    self.observe(time.perf_counter() - start)
                return event
        raise StageError("cannot append to the audit log", code=codes.AUDIT_UNAVAILABLE)

    async def _add_event(self, session: AsyncSession, kind: str, body: dict[str, Any]) -> ChainedEvent | None:
        """Stage the next event; None when another writer took its sequence number first."""
        await self._take_write_lock(session)
        head = (await session.execute(HEAD)).first()
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        if self.policy_version is not None:
            body = {**body, "policy_version": self.policy_version}
        event = seal(seq=seq, ts=ts, kind=kind, body=body, prev=prev)
        row = AuditEvent(
            seq=event.seq,
            ts=event.ts,
            kind=event.kind,
            body=event.body,
            prev_hash=event.prev_hash,
            hash=event.hash,
            **indexed_columns(event.body),  # copies for the console's filters, not hashed
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            return None
        return event

    async def _sign(self, session: AsyncSession, event: ChainedEvent) -> None:
        signature = self.signer.sign(event.seq, event.hash)
        head = await session.get(AuditHead, 1)
        if head is None:
            session.add(AuditHead(id=1, seq=event.seq, hash=event.hash, signature=signature))
        else:
            head.seq, head.hash, head.signature = event.seq, event.hash, signature
        if event.seq % self.checkpoint_every == 0:
            session.add(AuditCheckpoint(seq=event.seq, hash=event.hash, signature=signature))

    async def events(self, batch: int = 1000) -> AsyncIterator[ChainedEvent]:
        after = 0
        while True:
            async with self.db.session() as session:
                rows = (
                    await session.scalars(
                        select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(batch)
                    )
                ).all()
            if not rows:
                return
            for row in rows:
                yield ChainedEvent(row.seq, row.ts, row.kind, row.body, row.prev_hash, row.hash)
            after = rows[-1].seq

    async def verify(self, public_key: Ed25519PublicKey | None = None) -> ChainReport:
        """Re-compute the chain and check checkpoints and head against ``public_key`` (default:
        this gateway's own audit key)."""
        events = [event async for event in self.events()]
        async with self.db.session() as session:
            points = (await session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))).all()
            head = await session.get(AuditHead, 1)
        return verify_signed_log(
            events,
            [SignedPoint(p.seq, p.hash, p.signature) for p in points],
            SignedPoint(head.seq, head.hash, head.signature) if head else None,
            public_key or self.signer.public_key,
        )
