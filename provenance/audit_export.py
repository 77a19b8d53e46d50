"""Exporting audit events for auditors: filters, and JSON Lines or CSV output."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from consentry.provenance.audit import ChainedEvent

CSV_FIELDS = ["seq", "ts", "kind", "decision", "principal_id", "identity_id", "request_id", "hash", "body"]


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Every given field must match; ``None`` matches anything."""

    identity_id: str | None = None
    principal_id: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, event: ChainedEvent) -> bool:
        body = event.body
        if self.identity_id and body.get("identity_id") != self.identity_id:
            return False
        if self.principal_id and self.principal_id not in (body.get("principal_id"), body.get("actor")):
            return False
        if self.decision and body.get("decision") != self.decision:
            return False
        ts = datetime.fromisoformat(event.ts)
        if self.since and ts < _aware(self.since):
            return False
        return not (self.until and ts >= _aware(self.until))


def _aware(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC, the zone of every audit timestamp."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def export_lines(events: AsyncIterable[ChainedEvent], flt: AuditFilter, fmt: str) -> AsyncIterator[str]:
    """Yield the export line by line (CSV starts with a header)."""
    if fmt == "csv":
        yield _csv_row(CSV_FIELDS)
    async for event in events:
        if not flt.matches(event):
            continue
        if fmt == "jsonl":
            record = {
                "seq": event.seq,
                "ts": event.ts,
                "kind": event.kind,
                "hash": event.hash,
                "body": event.body,
            }
            yield json.dumps(record, sort_keys=True) + "\n"
        else:
            body = event.body
            yield _csv_row(
                [
                    event.seq,
                    event.ts,
                    event.kind,
                    body.get("decision", ""),
                    body.get("principal_id", body.get("actor", "")),
                    body.get("identity_id", ""),
                    body.get("request_id", ""),
                    event.hash,
                    json.dumps(body, sort_keys=True),
                ]
            )


def _csv_row(values: Sequence[object]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()
