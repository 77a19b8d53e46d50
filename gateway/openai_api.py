"""An OpenAI-compatible Images API in front of the gate: existing OpenAI clients work unchanged.

``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits`` (multipart, reference
images as ``image`` or ``image[]``) take OpenAI's field names and answer OpenAI's shape
(``created``, ``data[].b64_json``); errors come as OpenAI error objects whose ``code`` is the
Consentry code. The key may come as ``Authorization: Bearer`` (what OpenAI clients send) or
``X-API-Key``. Consentry's own fields travel as extra fields (``extra_body`` in openai-python):
``subject_id``, ``purpose``, ``seed``, ``negative_prompt``, ``steps``.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from litestar import Controller, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from pydantic import BaseModel, ConfigDict, Field

from consentry.gateway.gate import Gate, Release
from consentry.gateway.problems import OPENAI_HANDLERS
from consentry.gateway.requests import GenerationRequest
from consentry.gateway.storage.principals import PrincipalView
from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import BadInputError
from consentry.policies.limits import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_REFERENCES, MAX_SEED, MAX_STEPS

MODEL_NAME = "consentry"
"""The model name clients may send (or omit); the gate answers with its configured generator."""


class ImagesParams(BaseModel):
    """OpenAI's image parameters that Consentry honours, plus its own extra fields."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    size: str | None = Field(default=None, description="WIDTHxHEIGHT, or auto")
    response_format: Literal["b64_json", "url"] | None = None
    user: str | None = Field(default=None, max_length=200)
    # OpenAI parameters that change nothing here; accepted so that clients sending them work.
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_format: Literal["png"] | None = None
    # Consentry's fields (extra_body).
    subject_id: str | None = Field(default=None, min_length=1, max_length=40)
    purpose: Purpose | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)

    def to_request(self, references: tuple[bytes, ...] = ()) -> GenerationRequest:
        if self.response_format == "url":
            raise BadInputError(
                "response_format 'url' is not served: images are returned as b64_json only",
                code=codes.INPUT_RESPONSE_FORMAT_UNSUPPORTED,
            )
        if self.model not in (None, MODEL_NAME):
            raise BadInputError(
                f"unknown model {self.model!r}; this gateway serves {MODEL_NAME!r}",
                code=codes.INPUT_UNKNOWN_MODEL,
            )
        width, height = _size(self.size)
        return GenerationRequest(
            prompt=self.prompt,
            subject_id=self.subject_id,
            purpose=self.purpose,
            negative_prompt=self.negative_prompt,
            seed=self.seed,
            steps=self.steps,
            width=width,
            height=height,
            num_images=self.n,
            references=references,
        )


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size in (None, "auto"):
        return None, None
    try:
        w, h = (int(part) for part in size.lower().split("x"))
    except ValueError as exc:
        raise BadInputError(
            f"size must be WIDTHxHEIGHT or auto, got {size!r}", code=codes.INPUT_INVALID
        ) from exc
    return w, h  # ranges are checked against the shared limits when the job is built


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ConsentryInfo(BaseModel):
    record_id: str
    watermark: str
    audit_seq: int
    model: str
    untrained: bool


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, permission_error, ...")
    param: str | None = None
    code: str = Field(description="the Consentry code, e.g. consent.missing")
    consentry: dict[str, Any] | None = Field(
        default=None, description="stage verdicts, audit seq, field errors"
    )


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


# Every error these routes answer has OpenAI's shape; the OpenAPI document says so.
ERRORS = {
    status: ResponseSpec(OpenAIError, description=text, generate_examples=False)
    for status, text in [
        (400, "bad input (nothing stored)"),
        (401, "missing or unknown API key"),
        (403, "refused by the gate (audited)"),
        (404, "the named subject does not exist"),
        (429, "rate limited (Retry-After)"),
        (503, "a stage could not decide, or the queue is full (audited; Retry-After when busy)"),
    ]
}


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    consentry: ConsentryInfo = Field(description="the gate's record of this release")


def _render(release: Release) -> ImagesResponse:
    return ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=base64.b64encode(b).decode()) for b in release.images],
        consentry=ConsentryInfo(
            record_id=release.record_id,
            watermark=release.watermark,
            audit_seq=release.audit_seq,
            model=release.model,
            untrained=release.untrained,
        ),
    )


async def _files(value: Any) -> list[bytes]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, UploadFile):
            raise BadInputError("image must be an uploaded file", code=codes.INPUT_INVALID)
        out.append(await item.read())
    return out


class OpenAIImagesController(Controller):
    path = "/v1/images"
    tags = ["openai-compatible"]
    exception_handlers = OPENAI_HANDLERS

    @post("/generations", summary="OpenAI-compatible image generation (JSON)", responses=ERRORS)
    async def generations(self, data: ImagesParams, gate: Gate, principal: PrincipalView) -> ImagesResponse:
        return _render(await gate.generate(principal, data.to_request()))

    @post(
        "/edits",
        summary="OpenAI-compatible image edit: reference images as multipart `image`/`image[]`",
        responses=ERRORS,
    )
    async def edits(
        self,
        data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
        gate: Gate,
        principal: PrincipalView,
    ) -> ImagesResponse:
        fields = dict(data)
        uploads = [fields.pop(k) for k in ("image", "image[]") if k in fields]
        if "mask" in fields:  # inpainting masks are not supported: refuse rather than ignore
            raise BadInputError("mask is not supported by this gateway", code=codes.INPUT_INVALID)
        if not uploads:
            raise BadInputError("an edit needs at least one image", code=codes.INPUT_INVALID)
        files = [f for u in uploads for f in await _files(u)]
        if len(files) > MAX_REFERENCES:
            raise BadInputError(f"at most {MAX_REFERENCES} images", code=codes.INPUT_TOO_MANY_REFERENCES)
        params = ImagesParams.model_validate(fields)
        return _render(await gate.generate(principal, params.to_request(tuple(files))))
