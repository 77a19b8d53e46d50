"""Database schema (SQLAlchemy 2 declarative). Alembic migrations mirror this module.

Identifiers are opaque random strings (``idn_…``, ``prn_…``) so that nothing in a URL or an audit
record names a person. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

OPERATOR_ATTESTED = "operator_attested"
"""The server default of ``attestation`` columns: rows made before self-enrollment existed."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True)}


class Principal(Base):
    """Someone who calls the gateway: a service, an operator, an auditor."""

    __tablename__ = "principals"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key, stored only as the SHA-256 of the secret (keys are 256-bit random)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Identity(Base):
    """A protected person. ``data_key`` is their template key wrapped by the master key;
    erasure deletes it, which makes every template ciphertext unreadable (crypto-shredding)."""

    __tablename__ = "identities"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="active")
    data_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    erased_at: Mapped[datetime | None]
    # How the person was attested at enrollment (policies.consent.Attestation); with a liveness
    # proof, the challenge it answered and the SHA-256 of the proof's record (audited in full).
    attestation: Mapped[str] = mapped_column(String(40), server_default=OPERATOR_ATTESTED)
    liveness_challenge_id: Mapped[str | None] = mapped_column(String(40))
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))


class Template(Base):
    """One face embedding, AES-GCM encrypted under the identity's data key."""

    __tablename__ = "templates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    embedder: Mapped[str] = mapped_column(String(60))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class Grant(Base):
    """A subject's consent for one principal to generate their likeness."""

    __tablename__ = "grants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    purposes: Mapped[list[str]]
    deny_terms: Mapped[list[str]]
    expires_at: Mapped[datetime | None]
    max_uses: Mapped[int | None]
    uses: Mapped[int] = mapped_column(Integer, default=0)
    evidence: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # Only meaningful with the adapter_training purpose: training may use the photos kept at
    # enrollment instead of photos sent with the request.
    use_enrollment_photos: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The identity's attestation when the grant was recorded (also in ``evidence``).
    attestation: Mapped[str] = mapped_column(String(40), server_default=OPERATOR_ATTESTED)


class EnrollmentPhoto(Base):
    """A photo kept at enrollment (only when asked, for later adapter training), AES-GCM encrypted
    under the identity's data key; erasure deletes the rows and shreds any copy with the key."""

    __tablename__ = "enrollment_photos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    """Of the plaintext photo; also bound into the ciphertext's associated data."""
    created_at: Mapped[datetime]


class Adapter(Base):
    """A per-identity LoRA adapter and its training job. The weights are never in the database:
    they live in ``<adapters_dir>/<id>.lora.enc``, sealed under the identity's data key."""

    __tablename__ = "adapters"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    identity_id: Mapped[str] = mapped_column(ForeignKey("identities.id"), index=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    status: Mapped[str] = mapped_column(String(20))
    steps: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    prior_images: Mapped[int] = mapped_column(Integer)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float)
    photos_source: Mapped[str] = mapped_column(String(20))
    photos: Mapped[int] = mapped_column(Integer)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    """Of the encrypted file, so a swapped or truncated file is refused before decrypting."""
    error_code: Mapped[str | None] = mapped_column(String(60))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    """The training heartbeat: a "training" row whose heartbeat is stale was interrupted."""
    finished_at: Mapped[datetime | None]


class EnrollmentChallenge(Base):
    """A one-time self-enrollment challenge: head poses to show within ``expires_at``. The nonce
    is stored only as its SHA-256; ``used_at`` is set by the one answer it accepts, passed
    (``identity_id``) or refused (``refused_code``)."""

    __tablename__ = "enrollment_challenges"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nonce_sha256: Mapped[str] = mapped_column(String(64))
    poses: Mapped[list[str]]
    issued_to: Mapped[str] = mapped_column(String(40))
    """The principal that asked (not a foreign key: the local CLI actor has no row)."""
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    identity_id: Mapped[str | None] = mapped_column(ForeignKey("identities.id"))
    refused_code: Mapped[str | None] = mapped_column(String(60))


class GenerationRecord(Base):
    """A released generation: what the watermark payload and the C2PA manifest point to."""

    __tablename__ = "generation_records"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    watermark: Mapped[str] = mapped_column(String(32), unique=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    # Both are None for a generation that named no subject.
    identity_id: Mapped[str | None] = mapped_column(ForeignKey("identities.id"), index=True)
    grant_id: Mapped[str | None] = mapped_column(ForeignKey("grants.id"))
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(Text)
    untrained: Mapped[bool] = mapped_column(Boolean)
    manifest: Mapped[dict[str, Any]]
    outputs: Mapped[list[str]]
    audit_seq: Mapped[int] = mapped_column(BigInteger)
    subject_erased: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class AuditEvent(Base):
    """Append-only, hash-chained audit log (see provenance.audit).

    ``principal_id``, ``actor``, ``identity_id`` and ``code`` are copies of body fields, filled at
    append (and by migration 0006 for older rows) so that the console filters and pages by
    index instead of scanning JSON. They are not part of the hash: the chain hashes the body,
    and the console shows every event from its body; a copy edited in the database misleads
    a filter, never what an event says.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_kind_seq", "kind", "seq"),
        Index("ix_audit_events_kind_ts_code", "kind", "ts", "code"),
        Index("ix_audit_events_code_seq", "code", "seq"),
        Index("ix_audit_events_principal_seq", "principal_id", "seq"),
        Index("ix_audit_events_actor_seq", "actor", "seq"),
        Index("ix_audit_events_identity_seq", "identity_id", "seq"),
        Index("ix_audit_events_ts", "ts"),
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40), index=True)
    body: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal_id: Mapped[str | None] = mapped_column(String(40))
    """``body.principal_id``: the requester of a generation, the grantee of a grant."""
    actor: Mapped[str | None] = mapped_column(String(40))
    """``body.actor``: who made an administrative change."""
    identity_id: Mapped[str | None] = mapped_column(String(40))
    """``body.identity_id``."""
    code: Mapped[str | None] = mapped_column(String(60))
    """``body.decision``: ``released`` or the refusal code of a generation."""


class AuditCheckpoint(Base):
    """A signed (seq, hash) of the audit chain, kept every N events."""

    __tablename__ = "audit_checkpoints"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class AuditHead(Base):
    """The signed head of the chain (one row), re-signed on every append."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class AuditCount(Base):
    """How many audit events fell in each UTC day and hour, by kind and code: a rollup of
    ``audit_events`` for the console's charts and report, so that a 30-day count reads a few
    hundred rows instead of every event.

    A database trigger (migration 0006) adds each inserted event, in the inserting transaction,
    so the counts are exact whoever appends. Derived, not hashed: the chain covers the body; an
    edited count misleads a chart, never what an event says.
    """

    __tablename__ = "audit_counts"
    unit: Mapped[str] = mapped_column(String(4), primary_key=True)
    """``day`` (``bucket`` is ``ts`` cut to 10 characters: ``2025-01-31``) or ``hour`` (13:
    ``2025-01-31T23``)."""
    bucket: Mapped[str] = mapped_column(String(13), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    code: Mapped[str] = mapped_column(String(60), primary_key=True)
    """``audit_events.code``, ``''`` where it is NULL (a key column cannot be)."""
    events: Mapped[int] = mapped_column(BigInteger)


class ConsoleSession(Base):
    """A signed-in console session. Only the SHA-256 of its random token is stored; it is bound
    to the API key used to sign in, so revoking that key ends the session on its next request."""

    __tablename__ = "console_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
