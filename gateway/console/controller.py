"""The console's routes: each reads the session, calls one service method, renders one page.

Every POST checks the session's CSRF token before anything else; GETs change nothing (apart from
a session's last-seen time).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import Parameter
from litestar.response import Redirect, Stream
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.console.charts import bucket_labels, colour, rate_line, series, stacked_bars
from consentry.gateway.console.service import ConsoleService
from consentry.gateway.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    PAGE_HEADERS,
    Page,
    abilities,
    check_csrf,
    html_response,
    query,
    safe_next,
    session_required,
    set_cookie,
)
from consentry.gateway.storage.audit_queries import DECISION_KINDS, EventFilter
from consentry.gateway.storage.console_sessions import SignedIn
from consentry.policies import codes
from consentry.policies.errors import AuthError, BadInputError, ForbiddenError, NotFoundError

AnyRequest = Request[Any, Any, Any]
PathId = Parameter(max_length=40)
FILTER_FIELDS = ("identity", "principal", "decision", "code", "kind", "since", "until")
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def _time(raw: str, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadInputError(
            f"{name} must be an ISO date or time, e.g. 2025-01-31 or 2025-01-31T12:00",
            code=codes.CONSOLE_FILTER_INVALID,
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _int(raw: str | None, name: str) -> int | None:
    if raw in (None, ""):
        return None
    try:
        return int(str(raw))
    except ValueError as exc:
        raise BadInputError(f"{name} must be a whole number", code=codes.CONSOLE_FILTER_INVALID) from exc


def _params(request: AnyRequest, names: tuple[str, ...], longest: int = 100) -> dict[str, str]:
    out = {}
    for name in names:
        value = request.query_params.get(name, "")
        if len(value) > longest:
            raise BadInputError(f"{name} is too long", code=codes.CONSOLE_FILTER_INVALID)
        out[name] = value.strip()
    return out


async def _filter(
    request: AnyRequest, console: ConsoleService, db: AsyncSession
) -> tuple[EventFilter, dict[str, str]]:
    raw = _params(request, FILTER_FIELDS)
    if raw["decision"] and raw["decision"] not in DECISION_KINDS:
        raise BadInputError("decision must be released or refused", code=codes.CONSOLE_FILTER_INVALID)
    principal = await console.resolve_principal(db, raw["principal"]) if raw["principal"] else None
    flt = EventFilter(
        identity_id=raw["identity"] or None,
        principal_id=principal,
        decision=raw["decision"] or None,
        code=raw["code"] or None,
        kind=raw["kind"] or None,
        since=_time(raw["since"], "since"),
        until=_time(raw["until"], "until"),
    )
    return flt, raw


async def _signed_in(request: AnyRequest, console: ConsoleService, db: AsyncSession) -> SignedIn:
    viewer = await console.sessions.resolve(db, request.cookies.get(COOKIE))
    if viewer is None:
        raise session_required()
    return viewer


async def _posted(request: AnyRequest, console: ConsoleService, db: AsyncSession) -> tuple[SignedIn, Any]:
    """The session and the form of a POST, after its CSRF token checked out."""
    viewer = await console.sessions.resolve(db, request.cookies.get(COOKIE))
    if viewer is None:
        raise session_required()
    form = await request.form()
    check_csrf(viewer.csrf, form, request)
    return viewer, form


def _page(base: str, viewer: SignedIn) -> Page:
    return Page(base, viewer, abilities(viewer.principal.role))


def _login_page(
    request: AnyRequest, console: ConsoleService, base: str, status: int, error: str
) -> Response[str]:
    token = secrets.token_urlsafe(32)
    nxt = safe_next(base, request.query_params.get("next"))
    response = html_response(
        "login.html", status, page=Page(base, None, {}), csrf=token, next=nxt, error=error
    )
    set_cookie(response, request, console.gate.settings, base, LOGIN_COOKIE, token)
    return response


class ConsoleController(Controller):
    path = "/"
    include_in_schema = False

    # -- sign-in --------------------------------------------------------------------------------

    @get("/login")
    async def login_form(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[Any]:
        if await console.sessions.resolve(db, request.cookies.get(COOKIE)) is not None:
            return Redirect(console_base + "/", status_code=303)
        return _login_page(request, console, console_base, 200, "")

    @post("/login")
    async def login(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[Any]:
        form = await request.form()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        given = form.get("csrf") or ""
        if not expected or not isinstance(given, str) or not secrets.compare_digest(given, expected):
            raise ForbiddenError(
                "the sign-in form expired or came from elsewhere; reload it", code=codes.CONSOLE_CSRF_INVALID
            )
        secret = form.get("api_key") or ""
        try:
            token, _ = await console.sessions.sign_in(
                db, secret.strip() if isinstance(secret, str) else "", request.cookies.get(COOKIE)
            )
        except (AuthError, ForbiddenError) as exc:
            why = "this key may not use the console" if isinstance(exc, ForbiddenError) else exc.detail
            return _login_page(request, console, console_base, exc.status, why)
        nxt = safe_next(console_base, form.get("next") if isinstance(form.get("next"), str) else None)
        response: Response[Any] = Redirect(nxt, status_code=303)
        # A fresh token every sign-in: a session id planted before sign-in is never adopted.
        set_cookie(response, request, console.gate.settings, console_base, COOKIE, token)
        response.delete_cookie(LOGIN_COOKIE, path=console_base)
        return response

    @post("/logout")
    async def logout(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[Any]:
        await _posted(request, console, db)
        await console.sessions.end(db, request.cookies.get(COOKIE, ""))
        response: Response[Any] = Redirect(console_base + "/login", status_code=303)
        response.delete_cookie(COOKIE, path=console_base)
        return response

    # -- the audit log --------------------------------------------------------------------------

    @get("/")
    async def overview(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        page = _page(console_base, viewer)
        if not page.can["read_audit"]:
            # Operators read no audit log (as on the API): their console starts at identities.
            return Redirect(console_base + "/identities", status_code=303)
        given = _int(request.query_params.get("days"), "days")
        days = 14 if given is None else given
        if not 1 <= days <= 366:
            raise BadInputError("days must be 1-366", code=codes.CONSOLE_FILTER_INVALID)
        ov = await console.overview(db, viewer.principal, days)
        chars = 10 if days > 2 else 13
        labels = bucket_labels(ov.since, ov.until, chars)
        names, counts = series(ov.buckets, labels)
        chart = stacked_bars(
            names, counts, labels, f"Generation decisions per {'day' if chars == 10 else 'hour'}"
        )
        totals = {n: sum(counts[n]) for n in names}
        legend = [(n, colour(n, names), totals[n]) for n in names]
        return html_response("overview.html", page=page, ov=ov, chart=chart, legend=legend, days=days)

    @post("/chain/verify")
    async def verify_chain(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[Any]:
        viewer, _ = await _posted(request, console, db)
        await console.verify_chain(viewer.principal)
        return Redirect(console_base + "/#chain", status_code=303)

    @get("/decisions")
    async def decisions(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        flt, raw = await _filter(request, console, db)
        before = _int(request.query_params.get("before"), "before")
        after = _int(request.query_params.get("after"), "after")
        result = await console.decisions(db, viewer.principal, flt, before, after)
        return html_response(
            "decisions.html",
            page=_page(console_base, viewer),
            events=result,
            names=result.names,
            labels=result.labels,
            f=raw,
            newer=query(raw, after=result.newer) if result.newer else None,
            older=query(raw, before=result.older) if result.older else None,
            exports={fmt: query(raw, format=fmt) for fmt in ("csv", "jsonl")},
            refusal_codes=sorted(c for c in codes.ALL if c.split(".")[0] in REFUSAL_FAMILIES),
        )

    @get("/decisions/{seq:int}")
    async def decision(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str, seq: int
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        detail = await console.decision(db, viewer.principal, seq)
        return html_response("decision.html", page=_page(console_base, viewer), d=detail)

    @get("/export")
    async def export(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[Any]:
        viewer = await _signed_in(request, console, db)
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "jsonl"):
            raise BadInputError("format must be csv or jsonl", code=codes.CONSOLE_FILTER_INVALID)
        flt, _ = await _filter(request, console, db)
        lines = console.export(viewer.principal, flt, fmt)
        try:
            first = await anext(lines)  # role and filter errors surface here, as a page, not mid-stream
        except StopAsyncIteration:
            first = ""

        async def body() -> AsyncIterator[str]:
            yield first
            async for line in lines:
                yield line

        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            **PAGE_HEADERS,
            "Content-Disposition": f'attachment; filename="consentry-decisions-{stamp}.{fmt}"',
        }
        return Stream(body(), media_type=media, headers=headers)

    @get("/report")
    async def report(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        raw = _params(request, ("since", "until", "recompute"))
        until = _time(raw["until"], "until") or datetime.now(UTC)
        since = _time(raw["since"], "since") or until - timedelta(days=30)
        rep = await console.report(db, viewer.principal, since, until, raw["recompute"] == "1")
        days = (until - since).total_seconds() / 86400
        chars = 10 if days > 2 else 13
        labels = bucket_labels(since, until, chars)
        names, counts = series(rep.buckets, labels)
        chart = rate_line(names, counts, labels, "Share of generation requests refused")
        return html_response(
            "report.html",
            page=_page(console_base, viewer),
            rep=rep,
            chart=chart,
            f=raw,
            since=since,
            until=until,
        )

    # -- identities -----------------------------------------------------------------------------

    @get("/identities")
    async def identities(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        raw = _params(request, ("status", "before"))
        if raw["status"] not in ("", "active", "erased"):
            raise BadInputError("status must be active or erased", code=codes.CONSOLE_FILTER_INVALID)
        result = await console.identities(db, viewer.principal, raw["before"] or None, raw["status"] or None)
        older = query({"status": raw["status"]}, before=result.older) if result.older else None
        return html_response(
            "identities.html", page=_page(console_base, viewer), result=result, f=raw, older=older
        )

    @get("/identities/{identity_id:str}")
    async def identity(
        self,
        request: AnyRequest,
        console: ConsoleService,
        db: AsyncSession,
        console_base: str,
        identity_id: str = PathId,
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        detail = await console.identity(db, viewer.principal, identity_id)
        notice = _params(request, ("revoked", "adapters_deleted", "erased"), longest=300)
        return html_response(
            "identity.html",
            page=_page(console_base, viewer),
            d=detail,
            now=datetime.now(UTC),
            notice=notice,
        )

    @post("/grants/{grant_id:str}/revoke")
    async def revoke(
        self,
        request: AnyRequest,
        console: ConsoleService,
        db: AsyncSession,
        console_base: str,
        grant_id: str = PathId,
    ) -> Response[Any]:
        viewer, form = await _posted(request, console, db)
        typed = form.get("confirm") or ""
        identity_id, adapters = await console.revoke(
            db, viewer.principal, grant_id, typed if isinstance(typed, str) else ""
        )
        done = query({}, revoked=grant_id, adapters_deleted=str(adapters))
        return Redirect(f"{console_base}/identities/{identity_id}{done}", status_code=303)

    @post("/identities/{identity_id:str}/erase")
    async def erase(
        self,
        request: AnyRequest,
        console: ConsoleService,
        db: AsyncSession,
        console_base: str,
        identity_id: str = PathId,
    ) -> Response[Any]:
        viewer, form = await _posted(request, console, db)
        typed = form.get("confirm") or ""
        counts = await console.erase(viewer.principal, identity_id, typed if isinstance(typed, str) else "")
        summary = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())
        return Redirect(
            f"{console_base}/identities/{identity_id}{query({}, erased=summary)}", status_code=303
        )

    # -- provenance and calibration -------------------------------------------------------------

    @get("/verify")
    async def verify_form(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        return html_response("verify.html", page=_page(console_base, viewer), report=None, filename="")

    @post("/verify")
    async def verify(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer, form = await _posted(request, console, db)
        upload = form.get("image")
        data, name = b"", ""
        if isinstance(upload, UploadFile):
            data, name = await upload.read(), upload.filename or ""
        report = await console.verify_image(viewer.principal, data)
        return html_response("verify.html", page=_page(console_base, viewer), report=report, filename=name)

    @get("/calibration")
    async def calibration(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession, console_base: str
    ) -> Response[str]:
        viewer = await _signed_in(request, console, db)
        path = console.calibration(viewer.principal)
        made = datetime.fromtimestamp(path.stat().st_mtime, UTC) if path else None
        return html_response(
            "calibration.html",
            page=_page(console_base, viewer),
            made=made,
            threshold=console.gate.settings.match_threshold,
            where=str(console.gate.settings.data_dir / "calibration-report.html"),
        )

    @get("/calibration/report", media_type=MediaType.HTML)
    async def calibration_report(
        self, request: AnyRequest, console: ConsoleService, db: AsyncSession
    ) -> Response[bytes]:
        viewer = await _signed_in(request, console, db)
        path = console.calibration(viewer.principal)
        if path is None:
            raise NotFoundError("no calibration report yet: run consentry calibrate", code=codes.NOT_FOUND)
        headers = {**PAGE_HEADERS, "Content-Security-Policy": REPORT_CSP}
        return Response(path.read_bytes(), media_type=MediaType.HTML, headers=headers)


REFUSAL_FAMILIES = (
    "consent",
    "face",
    "output",
    "stage",
    "watermark",
    "gate",
    "generation",
    "upstream",
    "rate",
)
