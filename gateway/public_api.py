"""Public verification over HTTP, without a key: the C2PA Soft Binding Resolution API and /verify.

The API follows the C2PA Soft Binding Resolution API's OpenAPI description (paths, parameter
and field names, ``application/c2pa`` manifests), so any C2PA tool that resolves soft bindings
can resolve a stripped copy of a released image by its watermark:

- ``GET /v1/services/supportedAlgorithms``: the watermark algorithm this service resolves.
- ``GET /v1/matches/byBinding?alg=&value=`` (and ``POST`` with ``{"alg", "value"}``): the
  manifests a watermark payload names.
- ``POST /v1/matches/byContent``: the same, for an uploaded image (its watermark is decoded).
- ``GET /v1/manifests/{manifestId}``: the manifest store signed into the released file, or,
  when the subject has since revoked consent or been erased, 410 with a tombstone.

Consentry adds ``POST /v1/public/verify`` (a file's C2PA state, watermark, record and tombstone,
for the ``/verify`` page) and the page itself. Every API request spends one token from its
client address's bucket (429 + ``Retry-After`` when empty). No answer is cacheable: a
withdrawal of consent takes effect on the next request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, MediaType, Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Parameter
from PIL import Image

from consentry.gateway.public.page import HEADERS, PAGE
from consentry.gateway.public.schemas import (
    BindingQueryBody,
    MatchesOut,
    PublicVerifyOut,
    SupportedAlgorithmsOut,
    TombstoneProblemOut,
    matches_body,
    verify_out,
)
from consentry.gateway.public.service import STATE_KEY, PublicService
from consentry.policies.config import Settings
from consentry.provenance.resolution import Match, check_alg

C2PA_MEDIA_TYPE = "application/c2pa"
MaxResults = Parameter(
    default=10, ge=1, le=100, description="the most manifest identifiers to return (the spec's maxResults)"
)
Alg = Parameter(max_length=200, description="soft-binding algorithm (see /v1/services/supportedAlgorithms)")


@dataclass
class ImageUploadOperation(Operation):
    """Declares the raw image body (Litestar's ``Body`` knows only JSON, forms and msgpack)."""

    def __post_init__(self) -> None:
        binary = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))
        self.request_body = RequestBody(
            content={"image/*": binary, "application/octet-stream": binary},
            description="the image file itself, at most max_image_bytes",
            required=True,
        )


def matches_response(matches: tuple[Match, ...]) -> Response[MatchesOut]:
    # The spec's JSON, built by hand so that a missing similarityScore is left out rather than
    # null; MatchesOut documents the shape.
    body: Any = matches_body(matches)
    return Response(body)


def provide_public(state: State) -> PublicService:
    service: PublicService = state[STATE_KEY]
    return service


async def admit(request: Request[Any, Any, Any]) -> None:
    """Spend the client's token before anything of the request is read (a refused upload is
    never received)."""
    await provide_public(request.app.state).admit(request)


class SoftBindingController(Controller):
    """The C2PA Soft Binding Resolution API (query and fetch), served without a key."""

    path = "/v1"
    tags = ["public"]
    cache_control = CacheControlHeader(no_store=True)

    @get("/services/supportedAlgorithms", summary="Soft-binding algorithms this service resolves")
    async def supported_algorithms(self, public: PublicService) -> SupportedAlgorithmsOut:
        return SupportedAlgorithmsOut.model_validate(public.resolver.supported_algorithms())

    @get("/matches/byBinding", summary="Manifest ids a soft binding (watermark payload) names")
    async def by_binding(
        self,
        public: PublicService,
        alg: str = Alg,
        value: str = Parameter(max_length=200, description="the payload in base64 (or 16 hex digits)"),
        maxResults: int = MaxResults,
    ) -> Response[MatchesOut]:
        return matches_response(await public.resolver.by_binding(alg, value, maxResults))

    @post("/matches/byBinding", status_code=200, summary="Manifest ids a soft binding names (body form)")
    async def by_large_binding(
        self,
        public: PublicService,
        data: BindingQueryBody,
        maxResults: int = MaxResults,
    ) -> Response[MatchesOut]:
        return matches_response(await public.resolver.by_binding(data.alg, data.value, maxResults))

    @post(
        "/matches/byContent",
        status_code=200,
        summary="Manifest ids the watermark of an uploaded image names",
        operation_class=ImageUploadOperation,
    )
    async def by_content(
        self,
        request: Request[Any, Any, Any],
        public: PublicService,
        alg: str | None = Parameter(default=None, max_length=200),
        maxResults: int = MaxResults,
    ) -> Response[MatchesOut]:
        if alg is not None:
            check_alg(alg)  # before the upload is decoded

        async def work(_data: bytes, image: Image.Image, _mime: str) -> tuple[Match, ...]:
            return await public.resolver.by_content(image, maxResults)

        return matches_response(await public.with_upload(request, work))

    @get(
        "/manifests/{manifestId:str}",
        media_type=C2PA_MEDIA_TYPE,
        summary="The C2PA manifest store of a released image, or 410 + tombstone if consent was withdrawn",
        responses={
            410: ResponseSpec(
                data_container=TombstoneProblemOut,
                media_type="application/problem+json",
                description="The subject has since revoked consent or been erased: the manifest is withheld",
            )
        },
    )
    async def manifest(
        self,
        public: PublicService,
        manifestId: str = Parameter(max_length=64),
        returnActiveManifest: bool = Parameter(
            default=False, description="our stores hold one manifest, the active one: same answer"
        ),
    ) -> Response[bytes]:
        store = await public.resolver.manifest_store(manifestId)
        return Response(store, media_type=C2PA_MEDIA_TYPE)

    @post(
        "/public/verify",
        status_code=200,
        summary="Public check of an image: C2PA, watermark, record, tombstone",
        operation_class=ImageUploadOperation,
    )
    async def verify(self, request: Request[Any, Any, Any], public: PublicService) -> PublicVerifyOut:
        async def work(raw: bytes, image: Image.Image, mime: str) -> PublicVerifyOut:
            check = await public.resolver.check(raw, image, mime)
            return verify_out(check, public.resolver.deployment)

        return await public.with_upload(request, work)


@get(
    "/verify", media_type=MediaType.HTML, summary="Public page: verify an image (no sign-in)", tags=["public"]
)
async def verify_page() -> Response[str]:
    return Response(PAGE, media_type=MediaType.HTML, headers=HEADERS)


def public_router(path_prefix: str, settings: Settings) -> Router:
    """The public routes, mounted beside the gate's: the API rate-limited per client address,
    uploads limited to ``max_image_bytes``; the page (static) is not rate-limited."""
    api = Router(
        path="/",
        route_handlers=[SoftBindingController],
        dependencies={"public": Provide(provide_public, sync_to_thread=False)},
        before_request=admit,
        request_max_body_size=settings.max_image_bytes,
    )
    return Router(path=path_prefix, route_handlers=[api, verify_page])
