"""The HTTP side of upstream mode: one pooled client, bounded retries, capped answers, images.

Both upstream backends (:mod:`consentry.generation.upstream`) send their job through
:class:`UpstreamClient`, which turns every way an upstream can fail into a
:class:`~consentry.policies.errors.StageError` with a stable code:

- ``upstream.unavailable``: no connection (refused, reset, closed early), after the retries;
- ``upstream.timeout``: an attempt took longer than ``timeout_s`` (never retried: a slow
  upstream must not multiply the wait);
- ``upstream.error``: a non-2xx answer (its status and a short excerpt of its body); 502, 503
  and 504 are retried first, nothing else is;
- ``upstream.bad_response``: an answer that is not JSON, too large, carries no images, the wrong
  number of them, or images that do not decode (``detectors.images.decode_image``, with byte and
  pixel limits) or have the wrong size.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from consentry.detectors.images import decode_image
from consentry.generation.base import GenerationJob
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError, StageError
from consentry.policies.limits import MAX_IMAGES

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers of a gateway or a service that is starting or overloaded: worth one more try."""
BACKOFF_S = 0.2
"""Wait before the first retry; doubled for each further one, at most ``MAX_BACKOFF_S``."""
MAX_BACKOFF_S = 1.0
MAX_RETRIES = 5
MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""Largest decoded-from-base64 image file accepted from an upstream."""
MAX_ANSWER_BYTES = MAX_IMAGES * MAX_IMAGE_BYTES * 4 // 3 + 1024 * 1024
"""Largest answer body read: every image at its limit, base64-encoded, plus the JSON around it."""
EXCERPT_CHARS = 200

# Losing the connection before an answer arrived: the job may be re-sent. Timeouts are not here
# (httpx.ConnectTimeout is a TimeoutException, not a ConnectError).
_CONNECTION_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _fault(detail: str, code: str) -> StageError:
    return StageError(detail, code=code)


class UpstreamClient:
    """One ``httpx.Client`` (connections are pooled and kept alive) for one upstream service.

    ``post_json`` is thread-safe: the gate may still be running a timed-out job in a worker
    thread when the next one starts. Proxy variables in the environment are ignored
    (``trust_env=False``): approved jobs and their images go to the configured URL only.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        retries: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"upstream URL {base_url!r} must be an http:// or https:// URL with a host",
                code=codes.CONFIG_UPSTREAM_URL,
            )
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise ConfigurationError(f"upstream timeout must be a positive number, got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ConfigurationError(
                f"upstream retries must be an integer in 0..{MAX_RETRIES}, got {retries!r}"
            )
        # Named without credentials or path: this lands in audit events and manifests.
        self.host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers or {},
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            follow_redirects=False,
            trust_env=False,
        )
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def post_json(self, path: str, **request: Any) -> Any:
        """POST to ``path`` (``json=`` or ``data=``/``files=``) and return the decoded JSON answer."""
        last, answered = "", False  # the last failure, and whether it was an answer (a status)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S))
            if self._closed:
                raise _fault(f"the upstream client for {self.host} is closed", codes.GENERATION_CLOSED)
            try:
                status, body = self._attempt(path, request)
            except _CONNECTION_ERRORS as exc:
                last, answered = f"{type(exc).__name__}: {exc}", False
                logger.warning("upstream %s%s attempt %d: %s", self.host, path, attempt + 1, last)
                continue
            if status in RETRY_STATUSES:
                last, answered = _status_detail(status, body), True
                logger.warning("upstream %s%s attempt %d: %s", self.host, path, attempt + 1, last)
                continue
            if not 200 <= status < 300:
                raise _fault(
                    f"upstream {self.host}{path} answered {_status_detail(status, body)}",
                    codes.UPSTREAM_ERROR,
                )
            try:
                return json.loads(body)
            except ValueError as exc:
                raise _fault(
                    f"upstream {self.host}{path} answered {status} with a body that is not JSON: "
                    f"{_excerpt(body)!r}",
                    codes.UPSTREAM_BAD_RESPONSE,
                ) from exc
        attempts = f"{self.retries + 1} attempt(s)"
        if answered:
            raise _fault(f"upstream {self.host}{path} answered {last} after {attempts}", codes.UPSTREAM_ERROR)
        raise _fault(
            f"upstream {self.host} is unreachable after {attempts}: {last}", codes.UPSTREAM_UNAVAILABLE
        )

    def _attempt(self, path: str, request: dict[str, Any]) -> tuple[int, bytes]:
        """One request; the body is read up to ``MAX_ANSWER_BYTES`` and within ``timeout_s``."""
        started = time.monotonic()
        too_slow = _fault(
            f"upstream {self.host}{path} took longer than {self.timeout_s:g} s", codes.UPSTREAM_TIMEOUT
        )
        try:
            with self._client.stream("POST", path, **request) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise _fault(
                            f"upstream {self.host}{path} answered more than {MAX_ANSWER_BYTES} bytes",
                            codes.UPSTREAM_BAD_RESPONSE,
                        )
                    if time.monotonic() - started > self.timeout_s:
                        raise too_slow
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
        except httpx.TimeoutException as exc:
            raise too_slow from exc
        except _CONNECTION_ERRORS:
            raise
        except RuntimeError as exc:  # httpx: "the client has been closed" (closed meanwhile)
            if self._closed:
                raise _fault(
                    f"the upstream client for {self.host} is closed", codes.GENERATION_CLOSED
                ) from exc
            raise
        except httpx.HTTPError as exc:  # unsupported protocol, proxy or decoding errors
            raise _fault(
                f"cannot talk to upstream {self.host}: {type(exc).__name__}: {exc}",
                codes.UPSTREAM_UNAVAILABLE,
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._client.close()


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _status_detail(status: int, body: bytes) -> str:
    return f"status {status}: {_excerpt(body)!r}"


def decode_images(encoded: object, job: GenerationJob, source: str) -> tuple[Image.Image, ...]:
    """Base64 strings from an upstream answer → ``job.num_images`` RGB images of the job's size."""
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise _fault(f"{source} answered without a list of base64 images", codes.UPSTREAM_BAD_RESPONSE)
    if len(encoded) != job.num_images:
        raise _fault(
            f"{source} returned {len(encoded)} image(s), {job.num_images} were asked for",
            codes.UPSTREAM_BAD_RESPONSE,
        )
    images = []
    for index, text in enumerate(encoded):
        if text.startswith("data:") and "," in text:  # tolerate a data: URI
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
            image = decode_image(data, max_bytes=MAX_IMAGE_BYTES, max_pixels=job.width * job.height)
        except (binascii.Error, ValueError, BadInputError) as exc:
            detail = exc.detail if isinstance(exc, BadInputError) else f"not base64 ({exc})"
            raise _fault(
                f"{source} image {index} is unusable: {detail}", codes.UPSTREAM_BAD_RESPONSE
            ) from exc
        if image.size != (job.width, job.height):
            raise _fault(
                f"{source} image {index} is {image.width}x{image.height}, "
                f"{job.width}x{job.height} was asked for",
                codes.UPSTREAM_BAD_RESPONSE,
            )
        images.append(image)
    return tuple(images)
