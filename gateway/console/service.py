"""What the console does, over the Gate: every read checks the viewer's role against the one role
table (:mod:`consentry.policies.roles`), every change is the Gate's own operation with the
signed-in principal as actor (so revocations and erasures cascade and are audited as anywhere).

Every method that reads takes the request's database session (``s``, one per request, opened by
the router): a page costs one connection check-out and a handful of statements, whatever it shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.console.aggregates import RecentTimings
from consentry.gateway.flow import STAGES
from consentry.gateway.gate import Gate
from consentry.gateway.storage.adapters import AdapterView
from consentry.gateway.storage.audit_counts import Row, counts
from consentry.gateway.storage.audit_queries import (
    GENERATION_KINDS,
    AuditQueries,
    CheckpointStatus,
    EventFilter,
    EventPage,
    HeadStatus,
)
from consentry.gateway.storage.console_sessions import ConsoleSessions
from consentry.gateway.storage.identity_queries import GrantRow, IdentityPage, IdentityQueries, IdentityRow
from consentry.gateway.storage.principals import PrincipalView
from consentry.gateway.storage.records import RecordView
from consentry.policies import codes
from consentry.policies.errors import BadInputError, NotFoundError
from consentry.policies.roles import PERMISSIONS, Action, require
from consentry.provenance.audit import ChainedEvent, ChainReport
from consentry.provenance.audit_export import AuditFilter, export_lines
from consentry.provenance.verification import ProvenanceReport

TIMING_SAMPLE = 1000
"""Stage percentiles are taken over this many most recent generation decisions."""
ERASED_KIND = codes.IDENTITY_ERASED
"""The erasure's audit event kind (spelled like the code an erased identity is refused with)."""
CASCADE_KINDS = ("grant.revoked", ERASED_KIND, "key.revoked")
CASCADES_SHOWN = 200
"""The report lists at most this many revocations and erasures (all are counted; the decisions
page and its exports list every one)."""


def may(role: str, action: Action) -> bool:
    return role in {r.value for r in PERMISSIONS[action]}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return 0.0
    k = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[k]


@dataclass(frozen=True, slots=True)
class StageTiming:
    stage: str
    runs: int
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class Overview:
    since: datetime
    until: datetime
    buckets: list[tuple[str, str, str, int]]
    timings: list[StageTiming]
    head: HeadStatus | None
    last_verification: tuple[datetime, ChainReport] | None


@dataclass(frozen=True, slots=True)
class DecisionDetail:
    event: ChainedEvent
    record: RecordView | None
    grant_identity: str | None
    labels: dict[str, str]
    names: dict[str, str]


@dataclass(frozen=True, slots=True)
class IdentityDetail:
    identity: IdentityRow
    grants: list[GrantRow]
    adapters: list[AdapterView]


@dataclass(frozen=True, slots=True)
class CascadeRow:
    """One revocation or erasure as the report lists it."""

    seq: int
    time: str
    kind: str
    subject: str
    by: str
    effects: list[tuple[str, Any]]
    """``(what, how many)``: from the event's body, else from what the erasure left in the database."""


EFFECTS = ("grants_revoked", "templates_destroyed", "photos_deleted", "adapters_deleted", "records_flagged")


def cascade_row(event: ChainedEvent, names: dict[str, str], more: dict[str, int]) -> CascadeRow:
    b = event.body
    actor = b.get("actor")
    subject = b.get("grant_id") or b.get("identity_id") or b.get("key_id")
    effects = [(k.replace("_", " "), b[k] if k in b else more[k]) for k in EFFECTS if k in b or k in more]
    return CascadeRow(
        event.seq,
        event.ts[:19].replace("T", " "),
        event.kind,
        "" if subject is None else str(subject),
        names.get(actor, actor) if isinstance(actor, str) else "" if actor is None else str(actor),
        effects,
    )


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    since: datetime
    until: datetime
    counts: list[tuple[str, str, int]]
    buckets: list[tuple[str, str, str, int]]
    cascades: list[CascadeRow]
    head: HeadStatus | None
    span: tuple[int, int] | None
    checkpoints: CheckpointStatus | None
    recomputed: ChainReport | None
    generated_at: datetime


class ConsoleService:
    def __init__(self, gate: Gate, clock: Callable[[], datetime]) -> None:
        s = gate.settings
        self.gate = gate
        self.clock = clock
        self.audit = AuditQueries(gate.db)
        self.people = IdentityQueries()
        self.sessions = ConsoleSessions(
            gate.audit, idle_s=s.console_idle_timeout_s, max_s=s.console_max_session_s, clock=clock
        )
        self.page_size = s.console_page_size
        self.last_verification: tuple[datetime, ChainReport] | None = None
        self.timings = RecentTimings(self.audit, TIMING_SAMPLE)
        self._stage_timings: tuple[int, list[StageTiming]] = (-1, [])
        """Percentiles of :attr:`timings` and the last seq they were taken at."""
        self.verified_points: set[tuple[int, str]] = set()

    async def _series(self, s: AsyncSession, since: datetime, until: datetime) -> tuple[list[Row], list[Row]]:
        """All events by (bucket, kind, code), and the generation decisions among them: by day
        for ranges over two days, else by hour (from the rollup, see ``audit_counts``)."""
        rows = await counts(s, since, until, 10 if (until - since) > timedelta(days=2) else 13)
        return rows, [r for r in rows if r[1] in GENERATION_KINDS]

    async def _stage_percentiles(self, s: AsyncSession) -> list[StageTiming]:
        recent = await self.timings.bodies(s)
        if self._stage_timings[0] == self.timings.last_seq:
            return self._stage_timings[1]
        timings = []
        for stage in STAGES:
            values = sorted(
                float(v["elapsed_ms"])
                for stages in recent
                if isinstance(v := stages.get(stage), dict) and isinstance(v.get("elapsed_ms"), int | float)
            )
            timings.append(StageTiming(stage, len(values), percentile(values, 50), percentile(values, 95)))
        self._stage_timings = (self.timings.last_seq, timings)
        return timings

    # -- the audit log ---------------------------------------------------------------------------

    async def resolve_principal(self, s: AsyncSession, given: str) -> str:
        """A principal filter given as an id (``prn_…``) or as a name."""
        if given.startswith("prn_") or given == "local-cli":
            return given
        return await self.people.principal_by_name(s, given) or given

    async def decisions(
        self, s: AsyncSession, viewer: PrincipalView, flt: EventFilter, before: int | None, after: int | None
    ) -> EventPage:
        """A page of the filtered log, with the names and labels it shows."""
        require(viewer.role, Action.read_audit)
        return await self.audit.page(s, flt, limit=self.page_size, before=before, after=after)

    async def decision(self, s: AsyncSession, viewer: PrincipalView, seq: int) -> DecisionDetail:
        require(viewer.role, Action.read_audit)
        event = await self.audit.event(s, seq)
        if event is None:
            raise NotFoundError(f"no audit event {seq}", code=codes.CONSOLE_EVENT_NOT_FOUND)
        record = grant_identity = None
        request_id = event.body.get("request_id")
        if event.kind == GENERATION_KINDS[0] and isinstance(request_id, str):
            record, grant_identity = await self.people.record(s, request_id)
        if (record is None or not record.grant_id) and isinstance(event.body.get("grant_id"), str):
            grant_identity = await self.people.grant_identity(s, event.body["grant_id"])
        ids = [i for i in (event.body.get("identity_id"), grant_identity) if isinstance(i, str)]
        who = [p for p in (event.body.get("principal_id"), event.body.get("actor")) if isinstance(p, str)]
        names, labels = await self.people.names_and_labels(s, who, ids)
        return DecisionDetail(event, record, grant_identity, labels, names)

    async def export(self, viewer: PrincipalView, flt: EventFilter, fmt: str) -> AsyncIterator[str]:
        """The filtered events as CSV or JSON Lines, in ``consentry audit export``'s format."""
        require(viewer.role, Action.read_audit)
        # The SQL filter already selected; the export's own filter re-checks what it knows.
        again = AuditFilter(
            identity_id=flt.identity_id, principal_id=flt.principal_id, since=flt.since, until=flt.until
        )
        async for line in export_lines(self.audit.matching(flt), again, fmt):
            yield line

    async def overview(self, s: AsyncSession, viewer: PrincipalView, days: int) -> Overview:
        require(viewer.role, Action.read_audit)
        # The audit log's own time, not the sessions' clock (which tests move by hand).
        until = datetime.now(UTC)
        since = until - timedelta(days=days)
        _, buckets = await self._series(s, since, until)
        timings = await self._stage_percentiles(s)
        head = await self.audit.head(s, self.gate.audit.signer.public_key)
        return Overview(since, until, buckets, timings, head, self.last_verification)

    async def verify_chain(self, viewer: PrincipalView) -> ChainReport:
        """Re-compute the whole chain (seconds at 100,000 events); the result is kept for the
        overview of this process."""
        report = await self.gate.verify_audit(viewer)
        self.last_verification = (self.clock(), report)
        return report

    async def report(
        self, s: AsyncSession, viewer: PrincipalView, since: datetime, until: datetime, recompute: bool
    ) -> ComplianceReport:
        require(viewer.role, Action.read_audit)
        if until <= since:
            raise BadInputError("the report's end must be after its start", code=codes.CONSOLE_FILTER_INVALID)
        key = self.gate.audit.signer.public_key
        everything, buckets = await self._series(s, since, until)
        totals: dict[tuple[str, str], int] = {}
        for _, kind, code, n in everything:
            totals[(kind, code)] = totals.get((kind, code), 0) + n
        span = await self.audit.seq_span(s, since, until)
        rows: list[CascadeRow] = []
        checkpoints = None
        if span is not None:
            events, names = await self.audit.of_kinds(s, CASCADE_KINDS, span, since, until, CASCADES_SHOWN)
            # What each erasure took with it beyond its event's own counts (all in one statement).
            erased = [
                i for e in events if e.kind == ERASED_KIND and isinstance(i := e.body.get("identity_id"), str)
            ]
            more = await self.people.erasure_cascades(s, erased)
            rows = [
                cascade_row(e, names, more.get(e.body["identity_id"], {}) if e.kind == ERASED_KIND else {})
                for e in events
            ]
            checkpoints = await self.audit.checkpoints(s, span[0], span[1], key, self.verified_points)
        head = await self.audit.head(s, key)
        recomputed = await self.verify_chain(viewer) if recompute else None
        return ComplianceReport(
            since=since,
            until=until,
            counts=sorted((kind, code, n) for (kind, code), n in totals.items()),
            buckets=buckets,
            cascades=rows,
            head=head,
            span=span,
            checkpoints=checkpoints,
            recomputed=recomputed,
            generated_at=self.clock(),
        )

    # -- identities ------------------------------------------------------------------------------

    async def identities(
        self, s: AsyncSession, viewer: PrincipalView, before: str | None, status: str | None
    ) -> IdentityPage:
        require(viewer.role, Action.read_identities)
        try:
            return await self.people.page(s, limit=self.page_size, before=before, status=status)
        except ValueError as exc:
            raise BadInputError(f"bad page key {before!r}", code=codes.CONSOLE_FILTER_INVALID) from exc

    async def identity(self, s: AsyncSession, viewer: PrincipalView, identity_id: str) -> IdentityDetail:
        require(viewer.role, Action.read_identities)
        require(viewer.role, Action.read_adapters)
        row = await self.people.identity(s, identity_id)
        if row is None:
            raise NotFoundError(f"no identity {identity_id}", code=codes.IDENTITY_NOT_FOUND)
        grants = await self.people.grants(s, identity_id)
        # What Gate.list_adapters lists to a console role (every adapter), on this session.
        adapters = await self.people.adapters(s, identity_id)
        return IdentityDetail(row, grants, adapters)

    async def revoke(
        self, s: AsyncSession, viewer: PrincipalView, grant_id: str, typed: str
    ) -> tuple[str, int]:
        """Revoke a grant after its id was typed again; returns its identity and how many
        adapters went with it."""
        require(viewer.role, Action.revoke)
        _confirm(typed, grant_id)
        identity_id = await self.people.grant_identity(s, grant_id)
        if identity_id is None:
            raise NotFoundError(f"no grant {grant_id}", code=codes.GRANT_NOT_FOUND)
        # The gate's revoke deletes the adapters trained under the grant (and audits how many).
        adapters = [a for a in await self.gate.list_adapters(viewer, identity_id) if a.grant_id == grant_id]
        await self.gate.revoke(viewer, grant_id)
        return identity_id, len(adapters)

    async def erase(self, viewer: PrincipalView, identity_id: str, typed: str) -> dict[str, int]:
        require(viewer.role, Action.erase)
        _confirm(typed, identity_id)
        return await self.gate.erase(viewer, identity_id)

    async def verify_image(self, viewer: PrincipalView, data: bytes) -> ProvenanceReport:
        if not data:
            raise BadInputError("drop or choose an image file", code=codes.CONSOLE_UPLOAD_MISSING)
        return await self.gate.verify_provenance(viewer, data)

    def calibration(self, viewer: PrincipalView) -> Path | None:
        """The latest ``consentry calibrate`` report (its default place), if there is one."""
        require(viewer.role, Action.console_sign_in)
        path = self.gate.settings.data_dir / "calibration-report.html"
        return path if path.is_file() else None


def _confirm(typed: str, expected: str) -> None:
    if typed.strip() != expected:
        raise BadInputError(
            f"type {expected} to confirm; nothing was changed", code=codes.CONSOLE_CONFIRMATION_MISMATCH
        )
