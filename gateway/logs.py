"""JSON logs in which every line of one request carries its request id and record id.

The HTTP middleware puts the request id (the caller's ``X-Request-ID``, or a new one) into a
context variable and echoes it in the response; the Gate adds the generation record id as soon as
it has one. :class:`JsonFormatter` writes both on every line, whichever logger wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Annotations only: importing litestar (and the pdb it pulls in) costs ~0.2 s, which every
    # CLI command that opens the gate would pay for a module that only needs these types.
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str | None] = ContextVar("consentry_request_id", default=None)
record_id: ContextVar[str | None] = ContextVar("consentry_record_id", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
            "record_id": record_id.get(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_json_logging(level: int | str = logging.INFO) -> None:
    """One JSON handler on the root logger (idempotent); uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a request id per HTTP request, in the logs and in ``X-Request-ID``."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else f"req_{secrets.token_hex(8)}"
        token, record_token = request_id.set(rid), record_id.set(None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            record_id.reset(record_token)

    return middleware
