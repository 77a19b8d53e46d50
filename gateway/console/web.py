"""The console's HTTP plumbing: templates (autoescaped), security headers, the session cookie,
CSRF checks, and errors rendered as pages.

The console renders with its own Jinja2 environment rather than Litestar's app-wide
``TemplateConfig``: as a plugin it must not replace a host application's template engine.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import MediaType, Request, Response
from litestar.datastructures import FormMultiDict
from litestar.response import Redirect

from consentry.gateway.problems import describe
from consentry.gateway.storage.console_sessions import SignedIn
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.errors import AuthError, ForbiddenError
from consentry.policies.roles import Action

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
COOKIE = "consentry_console"
LOGIN_COOKIE = "consentry_console_login"
"""Double-submit token of the sign-in form (there is no session yet to bind it to)."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

log = logging.getLogger("consentry.console")

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class Page:
    """What every page's layout needs."""

    base: str
    viewer: SignedIn | None
    can: dict[str, bool]


def html_response(template: str, status: int = 200, **context: Any) -> Response[str]:
    text = env.get_template(template).render(**context)
    return Response(text, status_code=status, media_type=MediaType.HTML, headers=PAGE_HEADERS)


def query(params: dict[str, Any], **changes: Any) -> str:
    """``params`` with ``changes``, empty values dropped, as a query string (with ``?``)."""
    merged = {k: v for k, v in {**params, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(merged) if merged else ""


def secure_cookie(request: Request[Any, Any, Any], settings: Settings) -> bool:
    mode = settings.console_secure_cookie
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def set_cookie(
    response: Response[Any],
    request: Request[Any, Any, Any],
    settings: Settings,
    base: str,
    key: str,
    value: str,
) -> None:
    response.set_cookie(
        key,
        value,
        path=base,
        httponly=True,
        samesite="strict",
        secure=secure_cookie(request, settings),
    )


def check_csrf(expected: str, form: FormMultiDict, request: Request[Any, Any, Any]) -> None:
    """A form's ``csrf`` field (or an ``X-CSRF-Token`` header) must be the session's token."""
    given = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ForbiddenError(
            "the form's CSRF token is missing or wrong; reload the page", code=codes.CONSOLE_CSRF_INVALID
        )


def session_required() -> AuthError:
    return AuthError("sign in to the console", code=codes.CONSOLE_SESSION_REQUIRED)


def abilities(role: str) -> dict[str, bool]:
    from consentry.gateway.console.service import may

    return {
        "read_audit": may(role, Action.read_audit),
        "read_identities": may(role, Action.read_identities),
        "revoke": may(role, Action.revoke),
        "erase": may(role, Action.erase),
        "verify": may(role, Action.verify_provenance),
    }


def safe_next(base: str, target: str | None) -> str:
    """Where to go after signing in: only a console path of this gateway."""
    if target and target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


def error_handler(base: str) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        problem = describe(exc)
        if problem.code == codes.CONSOLE_SESSION_REQUIRED and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response: Response[Any] = Redirect(f"{base}/login{query({'next': target})}", status_code=303)
            response.delete_cookie(COOKIE, path=base)
            return response
        page = Page(base, None, {})
        return html_response("error.html", problem.status, page=page, problem=problem)

    return handle
