"""What the public routes share: the resolver, a rate limit per client address, decode slots.

Nothing here authenticates: public routes carry no key. Each request spends a token from its
client address's bucket (in process memory, or in Redis with ``redis_url`` so every worker and
replica shares it; an unreachable Redis refuses with 503 ``rate.unavailable``: fail closed). An
IPv6 client is counted per /64, since one host usually holds a whole /64.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

from litestar import Request
from PIL import Image

from consentry.detectors.images import sniff_mime
from consentry.gateway.gate import Gate, decode_uploads
from consentry.gateway.ratelimit import RateLimiter, RedisTokenBuckets, TokenBuckets
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError, StageError
from consentry.provenance.resolution import SoftBindingResolver

STATE_KEY = "consentry_public"
T = TypeVar("T")
REDIS_PREFIX = "consentry:public:"
_UPLOAD_TYPES = ("image/", "application/octet-stream")


class UnsupportedMediaTypeError(BadInputError):
    """An upload declared as something other than an image (415)."""

    code: ClassVar[str] = codes.INPUT_UNSUPPORTED_MEDIA_TYPE
    status = 415


def client_address(request: Request[Any, Any, Any], header: str | None) -> str:
    """The rate-limit key of a request: its client address, or its /64 for IPv6."""
    raw = ""
    if header is not None:
        # A proxy appends the address it saw: the right-most entry is the one ours added.
        raw = request.headers.get(header, "").rsplit(",", 1)[-1].strip()
    if not raw:
        raw = request.client.host if request.client is not None else ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:64] or "unknown"
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


class PublicService:
    def __init__(self, resolver: SoftBindingResolver, limiter: RateLimiter, settings: Settings) -> None:
        self.resolver = resolver
        self.limiter = limiter
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.public_decode_concurrency)

    async def admit(self, request: Request[Any, Any, Any]) -> None:
        """Spend the client's token, or raise 429 ``rate.limited`` with ``Retry-After``."""
        await self.limiter.take("addr:" + client_address(request, self.settings.public_client_header))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of ``public_decode_concurrency`` decode slots, or 503 ``public.busy`` at once
        (a public caller is better told to retry than queued behind a flood)."""
        if self._slots.locked():
            raise StageError(
                "public verification is busy; retry shortly", code=codes.PUBLIC_BUSY, retry_after=1
            )
        async with self._slots:
            yield

    async def with_upload(
        self,
        request: Request[Any, Any, Any],
        work: Callable[[bytes, Image.Image, str], Awaitable[T]],
    ) -> T:
        """Run ``work`` on the uploaded file (the raw request body, read under the router's
        ``max_image_bytes`` limit), its decoded pixels and its sniffed media type, decoded under
        the deployment's limits; decoding and ``work`` (a watermark decode is CPU work) hold one
        of ``public_decode_concurrency`` slots."""
        declared = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if declared and not declared.startswith(_UPLOAD_TYPES):
            raise UnsupportedMediaTypeError(
                f"send the image file itself as the body (image/*), not {declared}"
            )
        data = await request.body()
        async with self.slot():
            (image,) = await decode_uploads(self.settings, [data])
            return await work(data, image, sniff_mime(data))

    async def close(self) -> None:
        await self.limiter.close()


def open_public(gate: Gate) -> PublicService:
    s = gate.settings
    verifier = gate.parts.provenance
    resolver = SoftBindingResolver(
        verifier.watermarker, gate.records, verifier.trust_anchors_pem, s.public_deployment_name
    )
    limiter: RateLimiter
    if s.redis_url:
        limiter = RedisTokenBuckets(
            s.redis_url, s.public_rate_per_minute, s.public_rate_burst, prefix=REDIS_PREFIX
        )
    else:
        limiter = TokenBuckets(s.public_rate_per_minute, s.public_rate_burst)
    return PublicService(resolver, limiter, s)
