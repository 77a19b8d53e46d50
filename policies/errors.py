"""One error tree for the whole gate.

Every domain error carries a stable machine ``code`` (``consent.missing``, ``image.invalid``,...)
and the HTTP status it maps to. The gateway maps them to problem+json in one place and the CLI
to exit code 2; nothing else needs to know about HTTP. Foreign exceptions (torch, C2paError,
SQLAlchemy, PIL) are re-raised as one of these ``from exc`` at the package boundary.
"""

from __future__ import annotations

from typing import Any, ClassVar

from consentry.policies import codes


class ConsentryError(Exception):
    """Base of every error Consentry raises on purpose."""

    code: ClassVar[str] = codes.INTERNAL_ERROR
    status: ClassVar[int] = 500

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            # A finer code for this instance; the ClassVar stays the class's default (mypy forbids
            # assigning a ClassVar through an instance, hence the ignore).
            self.code = code  # type: ignore[misc]
        self.extra = extra

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class BadInputError(ConsentryError):
    """The caller sent something we cannot use (400)."""

    code: ClassVar[str] = codes.INPUT_INVALID
    status = 400


class InvalidImageError(BadInputError):
    """An upload is not a decodable, acceptable image."""

    code: ClassVar[str] = codes.IMAGE_INVALID
    status = 400


class ImageTooLargeError(BadInputError):
    """An image exceeds the configured pixel or byte limits (413)."""

    code: ClassVar[str] = codes.IMAGE_TOO_LARGE
    status = 413


class AuthError(ConsentryError):
    """Missing or unknown API key (401)."""

    code: ClassVar[str] = codes.AUTH_INVALID_KEY
    status = 401


class ForbiddenError(ConsentryError):
    """The principal's role does not allow this action (403)."""

    code: ClassVar[str] = codes.AUTH_FORBIDDEN
    status = 403


class NotFoundError(ConsentryError):
    """A named identity, grant, principal or record does not exist (404)."""

    code: ClassVar[str] = codes.NOT_FOUND
    status = 404


class ConflictError(ConsentryError):
    """The request conflicts with stored state (409)."""

    code: ClassVar[str] = codes.CONFLICT
    status = 409


class RefusedError(ConsentryError):
    """The gate refused the request; ``code`` says which rule (403).

    Raised by the pipeline after the refusal has been audited.
    """

    code: ClassVar[str] = codes.REFUSED
    status = 403


class ConfigurationError(ConsentryError):
    """The deployment is misconfigured: missing weights, keys, model directory (500-class,
    but reported to operators with a clear sentence and CLI exit 2)."""

    code: ClassVar[str] = codes.CONFIG_INVALID
    status = 500


class StageError(ConsentryError):
    """A stage failed unexpectedly; the gate fails closed (503)."""

    code: ClassVar[str] = codes.STAGE_ERROR
    status = 503


class StageTimeoutError(StageError):
    """A stage ran past its time budget (503)."""

    code: ClassVar[str] = codes.STAGE_TIMEOUT
    status = 503


class RateLimitedError(ConsentryError):
    """The principal sent more requests than its budget (429, with Retry-After)."""

    code: ClassVar[str] = codes.RATE_LIMITED
    status = 429


class GateBusyError(ConsentryError):
    """The gate's queue is full: refused at once, audited, to be retried later (503 + Retry-After)."""

    code: ClassVar[str] = codes.GATE_BUSY
    status = 503
