"""Principals and their API keys. Keys are shown once at creation and stored only hashed."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database, affected_rows
from consentry.gateway.storage.tables import ApiKey, Principal
from consentry.policies import codes
from consentry.policies.errors import AuthError, BadInputError, ConflictError, NotFoundError
from consentry.policies.roles import Role
from consentry.provenance.audit import ChainedEvent

KEY_PREFIX = "csk_"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def hash_key(secret: str) -> str:
    # A plain SHA-256 is enough here: the keys are 256-bit random, not passwords.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PrincipalView:
    id: str
    name: str
    role: str


# Local commands act with the rights of whoever can read the data directory: the operator.
LOCAL_ACTOR = PrincipalView(id="local-cli", name="local-cli", role="admin")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly issued key: ``secret`` is never stored and cannot be shown again."""

    principal: PrincipalView
    key_id: str
    secret: str


class Principals:
    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    async def create(self, name: str, role: str, actor: str = "local-cli") -> IssuedKey:
        if role not in {r.value for r in Role}:
            raise BadInputError(f"unknown role {role!r}", code=codes.PRINCIPAL_ROLE_INVALID)
        name = name.strip()
        if not name or len(name) > 200:
            raise BadInputError(
                "a principal needs a name of 1-200 characters", code=codes.PRINCIPAL_NAME_INVALID
            )
        now = datetime.now(UTC)
        principal = Principal(id=new_id("prn"), name=name, role=role, created_at=now)
        issued: list[tuple[str, str]] = []

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            session.add(principal)
            try:
                await session.flush()
            except IntegrityError as exc:
                raise ConflictError(
                    f"a principal named {name!r} exists", code=codes.PRINCIPAL_EXISTS
                ) from exc
            issued.append(await self._issue(session, principal.id, now))

        body = {"principal_id": principal.id, "role": role, "actor": actor}
        await self.audit.append("principal.created", body, also=write)
        return IssuedKey(PrincipalView(principal.id, name, role), *issued[0])

    async def issue_key(self, principal_id: str, actor: str = "local-cli") -> IssuedKey:
        found: list[IssuedKey] = []

        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            principal = await session.get(Principal, principal_id)
            if principal is None:
                raise NotFoundError(f"no principal {principal_id}", code=codes.PRINCIPAL_NOT_FOUND)
            key_id, secret = await self._issue(session, principal_id, datetime.now(UTC))
            view = PrincipalView(principal.id, principal.name, principal.role)
            found.append(IssuedKey(view, key_id, secret))

        await self.audit.append("key.issued", {"principal_id": principal_id, "actor": actor}, also=write)
        return found[0]

    @staticmethod
    async def _issue(session: AsyncSession, principal_id: str, now: datetime) -> tuple[str, str]:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=new_id("key"), principal_id=principal_id, key_hash=hash_key(secret), created_at=now)
        session.add(key)
        return key.id, secret

    async def revoke_key(self, key_id: str, actor: str = "local-cli") -> None:
        async def write(session: AsyncSession, _event: ChainedEvent) -> None:
            revoked = await affected_rows(
                session,
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC)),
            )
            if revoked == 0:
                raise NotFoundError(f"no live key {key_id}", code=codes.KEY_NOT_FOUND)

        await self.audit.append("key.revoked", {"key_id": key_id, "actor": actor}, also=write)

    async def authenticate(self, secret: str | None) -> PrincipalView:
        """The principal holding ``secret``; a missing, unknown or revoked key fails at once."""
        if not secret:
            raise AuthError("an API key is required (header X-API-Key)", code=codes.AUTH_MISSING_KEY)
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(Principal)
                    .join(ApiKey, ApiKey.principal_id == Principal.id)
                    .where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None))
                )
            ).scalar_one_or_none()
        if row is None:
            raise AuthError("unknown or revoked API key", code=codes.AUTH_INVALID_KEY)
        return PrincipalView(row.id, row.name, row.role)

    async def by_name(self, name: str) -> PrincipalView:
        async with self.db.session() as session:
            row = await session.scalar(select(Principal).where(Principal.name == name))
        if row is None:
            raise NotFoundError(f"no principal named {name!r}", code=codes.PRINCIPAL_NOT_FOUND)
        return PrincipalView(row.id, row.name, row.role)

    async def get(self, principal_id: str) -> PrincipalView:
        async with self.db.session() as session:
            row = await session.get(Principal, principal_id)
        if row is None:
            raise NotFoundError(f"no principal {principal_id}", code=codes.PRINCIPAL_NOT_FOUND)
        return PrincipalView(row.id, row.name, row.role)
