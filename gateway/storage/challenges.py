"""One-time self-enrollment challenges: issued, looked up by their answer, spent exactly once.

A challenge is spent by the first answer whose liveness proof is checked: in the transaction that
enrolls the identity when the proof passes, or in the one that audits its refusal. Both spend it
with ``UPDATE ... WHERE used_at IS NULL`` inside an audited unit of work (audited writes are
serialised), so of two concurrent answers exactly one is accepted and the other is a replay.
Time comes from an injected clock, so expiry is tested without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_log import AuditLog, UnitOfWork
from consentry.gateway.storage.db import Database, affected_rows
from consentry.gateway.storage.principals import new_id
from consentry.gateway.storage.tables import EnrollmentChallenge
from consentry.policies import codes
from consentry.policies.errors import ConsentryError
from consentry.provenance.audit import ChainedEvent

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands timezone-aware columns back naive; every stored time is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedChallenge:
    """A new challenge; ``nonce`` is shown once to whoever asked and never stored."""

    id: str
    nonce: str
    poses: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class OpenChallenge:
    """A challenge whose nonce was answered by the principal it was issued to, still unspent."""

    id: str
    poses: tuple[str, ...]
    expires_at: datetime


class ChallengeRefused(ConsentryError):
    """An answer names no open challenge: unknown (or not this principal's, or a wrong nonce),
    expired, or already spent. The caller audits it and answers with ``code``."""

    status = 403


class Challenges:
    def __init__(self, db: Database, audit: AuditLog, clock: Clock = utc_now) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    async def issue(self, issued_to: str, poses: Sequence[str], ttl_s: int) -> IssuedChallenge:
        """Store and audit a new challenge for ``issued_to`` (the audit event has no nonce)."""
        now = self.clock()
        # Hex: safe in a shell and as a command-line value (base64url may start with '-').
        nonce = secrets.token_hex(32)
        row = EnrollmentChallenge(
            id=new_id("chl"),
            nonce_sha256=nonce_digest(nonce),
            poses=list(poses),
            issued_to=issued_to,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            session.add(row)

        body = {
            "challenge_id": row.id,
            "actor": issued_to,
            "poses": row.poses,
            "expires_at": row.expires_at.isoformat(),
        }
        await self.audit.append("enrollment.challenge_issued", body, also=write)
        return IssuedChallenge(row.id, nonce, tuple(poses), row.expires_at)

    def _refuse_unless_open(self, row: EnrollmentChallenge | None, nonce: str, principal_id: str) -> None:
        # The same answer for a missing id, another principal's challenge and a wrong nonce:
        # an answer learns nothing about challenges it does not hold.
        if (
            row is None
            or row.issued_to != principal_id
            or not hmac.compare_digest(row.nonce_sha256, nonce_digest(nonce))
        ):
            raise ChallengeRefused(
                "no such challenge for this principal", code=codes.LIVENESS_UNKNOWN_CHALLENGE
            )
        if row.used_at is not None:
            raise ChallengeRefused(
                f"challenge {row.id} was already answered at {_aware(row.used_at).isoformat()}",
                code=codes.LIVENESS_REPLAYED,
            )
        if _aware(row.expires_at) <= self.clock():
            raise ChallengeRefused(
                f"challenge {row.id} expired at {_aware(row.expires_at).isoformat()}",
                code=codes.LIVENESS_EXPIRED,
            )

    async def open(self, challenge_id: str, nonce: str, principal_id: str) -> OpenChallenge:
        """The challenge this answer names, or ChallengeRefused saying why it cannot be answered."""
        async with self.db.session() as session:
            row = await session.get(EnrollmentChallenge, challenge_id)
        self._refuse_unless_open(row, nonce, principal_id)
        assert row is not None  # _refuse_unless_open raised otherwise
        return OpenChallenge(row.id, tuple(row.poses), _aware(row.expires_at))

    def spend_on_enrollment(self, challenge_id: str, nonce: str, principal_id: str) -> UnitOfWork:
        """A unit of work for the enrollment's transaction: re-check the challenge (still open at
        commit time) and spend it on the new identity; raises ChallengeRefused, rolling the
        enrollment back, when a concurrent answer spent it first or it expired meanwhile."""

        async def spend(session: AsyncSession, event: ChainedEvent) -> None:
            row = await session.get(EnrollmentChallenge, challenge_id, populate_existing=True)
            self._refuse_unless_open(row, nonce, principal_id)
            identity_id = event.body["identity_id"]
            if not await self._mark(session, challenge_id, identity_id=identity_id):
                raise ChallengeRefused(
                    f"challenge {challenge_id} was already answered", code=codes.LIVENESS_REPLAYED
                )

        return spend

    def spend_on_refusal(self, challenge_id: str, code: str) -> UnitOfWork:
        """A unit of work for a refusal's audit event: spend the challenge, if still unspent."""

        async def spend(session: AsyncSession, _event: ChainedEvent) -> None:
            await self._mark(session, challenge_id, refused_code=code)

        return spend

    async def _mark(
        self,
        session: AsyncSession,
        challenge_id: str,
        *,
        identity_id: str | None = None,
        refused_code: str | None = None,
    ) -> bool:
        spent = await affected_rows(
            session,
            update(EnrollmentChallenge)
            .where(EnrollmentChallenge.id == challenge_id, EnrollmentChallenge.used_at.is_(None))
            .values(used_at=self.clock(), identity_id=identity_id, refused_code=refused_code),
        )
        return spent == 1
