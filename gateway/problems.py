"""The one place where errors become HTTP responses: RFC 9457 problem+json with a stable code."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
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


def problem(status: int, code: str, detail: str, **extra: Any) -> Response[dict[str, Any]]:
    body = {"type": f"urn:consentry:problem:{code}", "title": code, "status": status, "detail": detail}
    body["code"] = code
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    return Response(content=body, status_code=status, media_type=PROBLEM, headers=headers)


def consentry_error(_: Request[Any, Any, Any], exc: ConsentryError) -> Response[dict[str, Any]]:
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.detail)
    return problem(exc.status, exc.code, exc.detail, **exc.extra)


def pydantic_error(_: Request[Any, Any, Any], exc: ValidationError) -> Response[dict[str, Any]]:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)]
    return problem(400, codes.INPUT_INVALID, "the request body does not match the schema", errors=errors)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code = _LITESTAR_CODES.get(status, codes.HTTP_ERROR if status < 500 else codes.INTERNAL_ERROR)
    detail = str(exc.detail)
    extra: dict[str, Any] = {}
    if isinstance(exc.__cause__, SerializationException):
        # Litestar wraps a body that does not parse in a plain 400 ClientException.
        code = codes.INPUT_MALFORMED_JSON
    elif isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        extra["errors"] = exc.extra
    return problem(status, code, detail, **extra)


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # Never a traceback to the client; the log keeps it for the operator.
    log.exception("unhandled error", exc_info=exc)
    return problem(500, codes.INTERNAL_ERROR, "internal error; the request was not completed")


HANDLERS = {
    ConsentryError: consentry_error,
    ValidationError: pydantic_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
