"""The one place where errors become HTTP responses.

:func:`describe` turns any exception into a :class:`Problem` (status, stable code, sentence,
extras); two renderers give it the shape each API promises: RFC 9457 problem+json for the
Consentry API (``HANDLERS``), and the OpenAI error object, with the Consentry code inside, for the
OpenAI-compatible routes (``OPENAI_HANDLERS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import ExceptionHandlersMap
from pydantic import ValidationError

from consentry.policies import codes
from consentry.policies.errors import ConsentryError

log = logging.getLogger("consentry.http")
PROBLEM = "application/problem+json"

# Litestar's own HTTP errors (routing, body limits, decoding) get codes of ours too.
_LITESTAR_CODES = {
    400: codes.INPUT_INVALID,
    401: codes.AUTH_INVALID_KEY,
    404: codes.ROUTE_NOT_FOUND,
    405: codes.ROUTE_METHOD_NOT_ALLOWED,
    413: codes.INPUT_TOO_LARGE,
    415: codes.INPUT_UNSUPPORTED_MEDIA_TYPE,
}

# The OpenAI error ``type`` for each status class, as OpenAI clients map them to exceptions.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    code: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


def describe(exc: Exception) -> Problem:
    if isinstance(exc, ConsentryError):
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.detail)
        return Problem(exc.status, exc.code, exc.detail, dict(exc.extra))
    if isinstance(exc, ValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
        return Problem(
            400, codes.INPUT_INVALID, "the request body does not match the schema", {"errors": errors}
        )
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = _LITESTAR_CODES.get(status, codes.HTTP_ERROR if status < 500 else codes.INTERNAL_ERROR)
        extra: dict[str, Any] = {}
        if isinstance(exc.__cause__, SerializationException):
            # Litestar wraps a body that does not parse in a plain 400 ClientException.
            code = codes.INPUT_MALFORMED_JSON
        elif isinstance(exc, ValidationException) and isinstance(exc.extra, list):
            extra["errors"] = exc.extra
        return Problem(status, code, str(exc.detail), extra)
    # Never a traceback to the client; the log keeps it for the operator.
    log.error("unhandled error", exc_info=exc)
    return Problem(500, codes.INTERNAL_ERROR, "internal error; the request was not completed")


def _retry_headers(p: Problem) -> dict[str, str] | None:
    return {"Retry-After": str(p.extra["retry_after"])} if "retry_after" in p.extra else None


def problem_response(p: Problem) -> Response[dict[str, Any]]:
    body = {
        "type": f"urn:consentry:problem:{p.code}",
        "title": p.code,
        "status": p.status,
        "detail": p.detail,
    }
    body["code"] = p.code
    body.update({k: v for k, v in p.extra.items() if v is not None})
    return Response(content=body, status_code=p.status, media_type=PROBLEM, headers=_retry_headers(p))


def openai_response(p: Problem) -> Response[dict[str, Any]]:
    """OpenAI's error object; ``code`` is the Consentry code, the rest rides in ``consentry``."""
    kind = _OPENAI_TYPES.get(p.status, "api_error" if p.status >= 500 else "invalid_request_error")
    errors = p.extra.get("errors")
    param = ".".join(str(x) for x in errors[0]["loc"]) if errors and errors[0].get("loc") else None
    body: dict[str, Any] = {"error": {"message": p.detail, "type": kind, "param": param, "code": p.code}}
    details = {k: v for k, v in p.extra.items() if v is not None}
    if details:
        body["error"]["consentry"] = details
    return Response(content=body, status_code=p.status, headers=_retry_headers(p))


def _problem_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return problem_response(describe(exc))


def _openai_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return openai_response(describe(exc))


HANDLERS: ExceptionHandlersMap = {Exception: _problem_handler, HTTPException: _problem_handler}
OPENAI_HANDLERS: ExceptionHandlersMap = {Exception: _openai_handler, HTTPException: _openai_handler}
