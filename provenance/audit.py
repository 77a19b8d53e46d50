"""The tamper-evident audit chain, independent of where it is stored.

Each event is hashed as SHA-256 over the canonical JSON of ``{seq, ts, kind, body, prev}``, where
``prev`` is the previous event's hash (64 zeros for the first). Canonical JSON means sorted keys,
no insignificant whitespace, UTF-8 — so any store that gives back the same values re-computes the
same chain. A verifier walks the events in sequence order and reports the first break.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consentry.provenance.audit_signing import signature_ok

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """Serialise deterministically: sorted keys, compact separators, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(*, seq: int, ts: str, kind: str, body: dict[str, Any], prev: str) -> str:
    doc = {"seq": seq, "ts": ts, "kind": kind, "body": body, "prev": prev}
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    """One audit event as stored."""

    seq: int
    ts: str
    kind: str
    body: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of re-computing a chain."""

    ok: bool
    events: int
    head: str
    first_bad_seq: int | None = None
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "head": self.head,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


def seal(*, seq: int, ts: str, kind: str, body: dict[str, Any], prev: str) -> ChainedEvent:
    """Make the next event of a chain whose head is ``prev``."""
    # Round-trip the body through canonical JSON so what is hashed is exactly what is stored.
    body = json.loads(canonical_json(body))
    digest = event_hash(seq=seq, ts=ts, kind=kind, body=body, prev=prev)
    return ChainedEvent(seq=seq, ts=ts, kind=kind, body=body, prev_hash=prev, hash=digest)


def verify_chain(events: Iterable[ChainedEvent]) -> ChainReport:
    """Re-compute every hash and link; sequence numbers must run 1, 2, 3... without gaps."""
    prev = GENESIS
    count = 0
    for expected_seq, event in enumerate(events, start=1):
        count = expected_seq
        if event.seq != expected_seq:
            return ChainReport(False, count, prev, event.seq, f"sequence gap: expected {expected_seq}")
        if event.prev_hash != prev:
            return ChainReport(False, count, prev, event.seq, "link to previous event broken")
        digest = event_hash(seq=event.seq, ts=event.ts, kind=event.kind, body=event.body, prev=prev)
        if digest != event.hash:
            return ChainReport(False, count, prev, event.seq, "event content does not match its hash")
        prev = event.hash
    return ChainReport(True, count, prev)


@dataclass(frozen=True, slots=True)
class SignedPoint:
    """A signed (seq, hash) of the chain: a checkpoint or the head."""

    seq: int
    hash: str
    signature: bytes


def verify_signed_log(
    events: list[ChainedEvent],
    checkpoints: list[SignedPoint],
    head: SignedPoint | None,
    public_key: Any,
) -> ChainReport:
    """The chain, plus every checkpoint and the head: signed by ``public_key`` and matching the
    events. A missing head with events present, or a head beyond the last event, is a cut tail."""
    report = verify_chain(events)
    if not report.ok:
        return report
    by_seq = {e.seq: e.hash for e in events}

    def broken(seq: int | None, problem: str) -> ChainReport:
        return ChainReport(False, report.events, report.head, seq, problem)

    for point in checkpoints:
        if not signature_ok(public_key, point.seq, point.hash, point.signature):
            return broken(point.seq, "checkpoint signature invalid")
        if by_seq.get(point.seq) != point.hash:
            return broken(point.seq, "checkpoint does not match the log")
    if head is None:
        return broken(None, "signed head missing") if events else report
    if not signature_ok(public_key, head.seq, head.hash, head.signature):
        return broken(head.seq, "head signature invalid")
    if head.seq != report.events or head.hash != report.head:
        ends = f"log ends at seq {report.events} but the signed head is seq {head.seq}"
        return broken(min(head.seq, report.events + 1), f"{ends}: tail cut or forged")
    return report
