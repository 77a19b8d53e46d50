"""Server-side console sessions, in the database so that every replica sees them.

A session is a random 256-bit token held by the browser in an HttpOnly cookie; the database keeps
only its SHA-256. It is bound to the API key that signed in: every request joins the session to
that key, so a revoked key ends the session on its next request. The CSRF token of a session is
an HMAC of its token, so it needs no storage and is useless without the cookie it belongs to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.principals import PrincipalView, hash_key
from consentry.gateway.storage.tables import ApiKey, ConsoleSession, Principal
from consentry.policies import codes
from consentry.policies.errors import AuthError
from consentry.policies.roles import Action, require
from consentry.provenance.audit import ChainedEvent

Clock = Callable[[], datetime]
TOUCH_EVERY = timedelta(seconds=15)
"""``last_seen_at`` is written at most this often per session (reads need no write each)."""


def system_clock() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_for(token: str) -> str:
    """The CSRF token of the session ``token``."""
    return hmac.new(token.encode(), b"consentry-console-csrf", hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A live session: who, with which key, and the CSRF token its forms carry."""

    principal: PrincipalView
    key_id: str
    csrf: str


class ConsoleSessions:
    def __init__(self, audit: AuditLog, *, idle_s: float, max_s: float, clock: Clock = system_clock) -> None:
        self.audit = audit
        self.idle = timedelta(seconds=idle_s)
        self.max_age = timedelta(seconds=max_s)
        self.clock = clock

    async def sign_in(
        self, s: AsyncSession, secret: str, previous: str | None = None
    ) -> tuple[str, SignedIn]:
        """Exchange an API key for a new session; returns the new token. A session the browser
        already had is ended: the token is always new (no session fixation). ``s`` is the
        request's session (the new session row is written with its audit event, on the log's)."""
        if not secret:
            raise AuthError("an API key is required", code=codes.AUTH_MISSING_KEY)
        row = (
            await s.execute(
                select(Principal, ApiKey.id)
                .join(ApiKey, ApiKey.principal_id == Principal.id)
                .where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
            )
        ).first()
        if row is None:
            raise AuthError("unknown or revoked API key", code=codes.AUTH_INVALID_KEY)
        principal, key_id = row
        require(principal.role, Action.console_sign_in)
        view = PrincipalView(principal.id, principal.name, principal.role)
        if previous:
            await self.end(s, previous)
        token = secrets.token_urlsafe(32)
        now = self.clock()

        async def write(session_: AsyncSession, _event: ChainedEvent) -> None:
            # Sessions past their time go when someone signs in: the table stays small.
            await session_.execute(
                delete(ConsoleSession).where(
                    or_(
                        ConsoleSession.last_seen_at < now - self.idle,
                        ConsoleSession.created_at < now - self.max_age,
                    )
                )
            )
            session_.add(
                ConsoleSession(
                    token_hash=token_hash(token),
                    principal_id=view.id,
                    key_id=key_id,
                    created_at=now,
                    last_seen_at=now,
                )
            )

        # Who opened the console, with which key, is part of the record an auditor reads.
        await self.audit.append("console.signed_in", {"actor": view.id, "key_id": key_id}, also=write)
        return token, SignedIn(view, key_id, csrf_for(token))

    async def resolve(self, s: AsyncSession, token: str | None) -> SignedIn | None:
        """The live session of ``token``, or None (unknown, idle too long, too old, its key
        revoked: any of these also deletes the row). One statement, on the request's session
        ``s``, plus a committed write when the row is deleted or its last-seen time is due."""
        if not token:
            return None
        digest = token_hash(token)
        now = self.clock()
        row = (
            await s.execute(
                select(
                    ConsoleSession.key_id,
                    ConsoleSession.created_at,
                    ConsoleSession.last_seen_at,
                    Principal.id,
                    Principal.name,
                    Principal.role,
                    ApiKey.revoked_at,
                )
                .join(Principal, Principal.id == ConsoleSession.principal_id)
                .join(ApiKey, ApiKey.id == ConsoleSession.key_id)
                .where(ConsoleSession.token_hash == digest)
            )
        ).first()
        if row is None:
            return None
        key_id, created_at, last_seen_at, principal_id, name, role, revoked_at = row
        seen, created = _aware(last_seen_at), _aware(created_at)
        if revoked_at is not None or now - seen > self.idle or now - created > self.max_age:
            await s.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == digest))
            await s.commit()
            return None
        if now - seen > TOUCH_EVERY:
            await s.execute(
                update(ConsoleSession).where(ConsoleSession.token_hash == digest).values(last_seen_at=now)
            )
            await s.commit()
        return SignedIn(PrincipalView(principal_id, name, role), key_id, csrf_for(token))

    async def end(self, s: AsyncSession, token: str) -> None:
        await s.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash(token)))
        await s.commit()
