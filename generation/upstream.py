"""Upstream mode: forward the approved job to an image service that already runs.

The gate stays in front (consent, reference checks before; output checks, watermark, signature
and audit after); the upstream only makes the pictures. Two API shapes are spoken:

- :class:`UpstreamOpenAIImages`: the OpenAI Images API (``POST /images/generations``, or
  ``/images/edits`` with the references as PNG files), as served by OpenAI and by many local
  servers; ``base_url`` includes the API prefix (``http://host:8000/v1``).
- :class:`UpstreamA1111`: AUTOMATIC1111 / Forge (``POST /sdapi/v1/txt2img``, or
  ``/sdapi/v1/img2img`` from the first reference); ``base_url`` is the server root.

Transport, retries and the failure codes are in :mod:`consentry.generation.upstream_http`.
Both backends implement :class:`consentry.generation.base.Generator`.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any, Self

from PIL import Image

from consentry.generation.base import GenerationJob, GenerationOutput
from consentry.generation.upstream_http import UpstreamClient, decode_images
from consentry.policies import codes
from consentry.policies.errors import StageError


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class _UpstreamGenerator:
    """What both API shapes share: the client, the name, the output."""

    def __init__(self, client: UpstreamClient, name: str, untrained: bool) -> None:
        self._http = client
        self._name = name
        self._untrained = bool(untrained)

    @property
    def name(self) -> str:
        """``openai:<model>@host`` or ``a1111@host``: the audit and the manifest name this."""
        return self._name

    @property
    def untrained(self) -> bool:
        return self._untrained

    @property
    def timeout_s(self) -> float:
        return self._http.timeout_s

    @property
    def retries(self) -> int:
        return self._http.retries

    def _output(
        self, job: GenerationJob, images: tuple[Image.Image, ...], started: float
    ) -> GenerationOutput:
        return GenerationOutput(
            images=images,
            model=self._name,
            untrained=self._untrained,
            seed=job.seed,
            steps=job.steps,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _check_open(self) -> None:
        if self._http.closed:
            raise StageError(f"generator {self._name} is closed", code=codes.GENERATION_CLOSED)

    def close(self) -> None:
        """Close the pooled connections; later ``generate`` calls fail with ``generation.closed``."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UpstreamOpenAIImages(_UpstreamGenerator):
    """An OpenAI-Images-compatible service. ``model`` is sent when given (else the service's
    default); ``api_key`` is sent as a bearer token. The job's seed, steps and guidance have no
    field in this API and are not sent (the output still reports the job's seed and steps)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        untrained: bool = False,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = UpstreamClient(base_url, timeout_s=timeout_s, retries=retries, headers=headers)
        super().__init__(client, f"openai:{model or 'default'}@{client.host}", untrained)
        self.model = model

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self._check_open()
        started = time.perf_counter()
        fields: dict[str, Any] = {
            "prompt": job.prompt,
            "n": job.num_images,
            "size": f"{job.width}x{job.height}",
            "response_format": "b64_json",
        }
        if self.model:
            fields["model"] = self.model
        if job.references:
            path = "/images/edits"
            files = [
                ("image[]", (f"reference-{index}.png", png_bytes(ref), "image/png"))
                for index, ref in enumerate(job.references)
            ]
            answer = self._http.post_json(
                path, data={key: str(value) for key, value in fields.items()}, files=files
            )
        else:
            path = "/images/generations"
            answer = self._http.post_json(path, json=fields)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise StageError(
                f"upstream {self._name} answered {path} without a 'data' list",
                code=codes.UPSTREAM_BAD_RESPONSE,
            )
        encoded = [item.get("b64_json") for item in data]
        return self._output(job, decode_images(encoded, job, f"upstream {self._name}"), started)


class UpstreamA1111(_UpstreamGenerator):
    """An AUTOMATIC1111-compatible (``sdapi``) service: the job's prompt, negative prompt, seed,
    steps, size, count and guidance are all sent; with references, the first one is the
    img2img init image (the service's default denoising strength applies)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 2,
        untrained: bool = False,
    ) -> None:
        client = UpstreamClient(base_url, timeout_s=timeout_s, retries=retries)
        super().__init__(client, f"a1111@{client.host}", untrained)

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self._check_open()
        started = time.perf_counter()
        payload: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": job.seed,
            "steps": job.steps,
            "width": job.width,
            "height": job.height,
            "batch_size": job.num_images,
            "n_iter": 1,
            "cfg_scale": job.guidance_scale,
        }
        path = "/sdapi/v1/txt2img"
        if job.references:
            path = "/sdapi/v1/img2img"
            payload["init_images"] = [base64.b64encode(png_bytes(job.references[0])).decode("ascii")]
        answer = self._http.post_json(path, json=payload)
        encoded = answer.get("images") if isinstance(answer, dict) else None
        return self._output(job, decode_images(encoded, job, f"upstream {self._name}"), started)
