"""Liveness and readiness, cheap enough for a load balancer to probe every few seconds.

Liveness answers from memory. Readiness makes two indexed single-row reads — the chain's last
event and its signed head — and one Ed25519 verification, so its cost does not grow with the
audit log. Re-computing the whole chain is ``consentry audit verify``'s job, not a probe's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from consentry.gateway.storage.audit_log import HEAD, AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.tables import AuditHead
from consentry.provenance.audit_signing import signature_ok

if TYPE_CHECKING:
    from consentry.gateway.models import Loadable


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether this replica can serve generation requests, and if not, why."""

    database: bool
    models_loaded: bool
    audit_head: bool
    """The signed head names the chain's last event and its signature verifies."""
    audit_seq: int
    problems: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.problems


async def check_readiness(db: Database, audit: AuditLog, models: Sequence[Loadable]) -> Readiness:
    problems: list[str] = []
    loaded = all(m.loaded for m in models)
    if not loaded:
        problems.append("models are not loaded yet")
    try:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
            last = (await session.execute(HEAD)).first()
            head = await session.get(AuditHead, 1)
    except (OSError, SQLAlchemyError) as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
        return Readiness(False, loaded, False, 0, tuple(problems))
    seq = int(last[0]) if last else 0
    if last is None:
        head_ok = head is None  # an empty log has no head to check
    else:
        head_ok = (
            head is not None
            and (head.seq, head.hash) == (last[0], last[1])
            and signature_ok(audit.signer.public_key, head.seq, head.hash, head.signature)
        )
    if not head_ok:
        problems.append("the audit head does not match the last event or its signature is invalid")
    return Readiness(True, loaded, head_ok, seq, tuple(problems))
