"""The contract between the gate and whatever makes the pictures.

The gateway only ever sees a :class:`Generator`: it hands over an approved
:class:`GenerationJob` and gets a :class:`GenerationOutput` back. Backends (local diffusers
pipelines, identity adapters, an upstream HTTP service) know nothing about consent; the job they
receive has already passed the consent and reference checks.

Job limits are checked here, once, so every backend can rely on sane sizes and a caller cannot
ask one request to tie up the GPU for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError
from consentry.policies.limits import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    SIDE_MULTIPLE,
)


def _bad(detail: str) -> BadInputError:
    return BadInputError(detail, code=codes.GENERATION_INVALID_PARAMS)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; ``steps=True`` is a caller bug, not 1 step.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _bad(f"{name} must be between {low} and {high}, got {value}")


class GenerationMode(StrEnum):
    """How the subject's likeness reaches the model."""

    txt2img = "txt2img"
    """From the prompt alone (with the subject's LoRA adapter when the job carries one)."""
    img2img = "img2img"
    """Denoised from the first verified reference photo; ``strength`` says how far."""
    ip_adapter = "ip_adapter"
    """Conditioned on the verified reference faces through an IP-Adapter (weights by path)."""


@dataclass(frozen=True, slots=True)
class AdapterWeights:
    """A subject's LoRA adapter, decrypted in memory for one job: safetensors bytes of the UNet's
    LoRA state dict. Never written to disk in the clear; never repr'd into a log."""

    id: str
    weights: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationJob:
    """One approved request to a generator.

    ``references`` are the (already verified) reference photos: text-to-image ignores them,
    image-to-image starts from the first, IP-Adapter conditions on all of them. ``adapter`` is
    the subject's LoRA, loaded for this job only. ``seed`` makes a run reproducible: the same job
    on the same backend and device gives the same pixels.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int
    steps: int
    width: int
    height: int
    num_images: int = 1
    guidance_scale: float
    references: tuple[Image.Image, ...] = ()
    mode: GenerationMode = GenerationMode.txt2img
    strength: float = 0.6
    """img2img only: how much of the reference is re-drawn, in (0, 1]; 1 ignores it entirely."""
    adapter: AdapterWeights | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise _bad("prompt must be a non-empty string")
        if not isinstance(self.negative_prompt, str):
            raise _bad("negative_prompt must be a string")
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                raise _bad(f"{name} is longer than {MAX_PROMPT_CHARS} characters")
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("num_images", self.num_images, 1, MAX_IMAGES)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, SIDE_MULTIPLE, MAX_SIDE)
            if value % SIDE_MULTIPLE:
                raise _bad(f"{name} must be a multiple of {SIDE_MULTIPLE}, got {value}")
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, int | float):
            raise _bad("guidance_scale must be a number")
        # ``not 0 <= g`` also rejects NaN, which compares false with everything.
        if not 0.0 <= float(guidance) <= MAX_GUIDANCE:
            raise _bad(f"guidance_scale must be between 0 and {MAX_GUIDANCE}, got {guidance}")
        if isinstance(self.references, list):
            # Frozen: coerce through object.__setattr__ so a list cannot be mutated afterwards.
            object.__setattr__(self, "references", tuple(self.references))
        if not isinstance(self.references, tuple):
            raise _bad("references must be a tuple of PIL images")
        if len(self.references) > MAX_REFERENCES:
            raise _bad(f"at most {MAX_REFERENCES} reference images are allowed")
        if not all(isinstance(ref, Image.Image) for ref in self.references):
            raise _bad("every reference must be a PIL image")
        self._check_mode()

    def _check_mode(self) -> None:
        try:
            object.__setattr__(self, "mode", GenerationMode(self.mode))
        except ValueError as exc:
            modes = ", ".join(m.value for m in GenerationMode)
            raise _bad(f"mode must be one of {modes}, got {self.mode!r}") from exc
        strength = self.strength
        # ``not 0 < s <= 1`` also rejects NaN.
        if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 < strength <= 1.0:
            raise BadInputError(
                f"strength must be a number in (0, 1], got {strength!r}",
                code=codes.GENERATION_STRENGTH_INVALID,
            )
        if self.mode is not GenerationMode.txt2img and not self.references:
            raise BadInputError(
                f"mode {self.mode.value} needs at least one reference photo",
                code=codes.GENERATION_REFERENCE_REQUIRED,
            )
        if self.mode is GenerationMode.img2img and int(self.steps * strength) < 1:
            # diffusers runs int(steps * strength) denoising steps; zero would fail deep inside.
            raise BadInputError(
                f"img2img with strength {strength} runs no step of {self.steps}; raise steps or strength",
                code=codes.GENERATION_STRENGTH_INVALID,
            )
        if self.adapter is not None and not isinstance(self.adapter, AdapterWeights):
            raise _bad("adapter must be AdapterWeights")


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationOutput:
    """What a generator made, and enough about how to audit and reproduce it.

    ``model`` names the model (a directory or service name); ``untrained`` is True for the
    project's own tiny test pipeline, whose output is noise and must be labelled as such.
    """

    images: tuple[Image.Image, ...]
    model: str
    untrained: bool
    seed: int
    steps: int
    elapsed_ms: float
    mode: GenerationMode = GenerationMode.txt2img
    adapter_id: str | None = None
    """The subject's LoRA adapter that was loaded for this job (the id, never the weights)."""

    def summary(self) -> str:
        note = " (untrained model: outputs are noise-like)" if self.untrained else ""
        how = f" by {self.mode.value}" + (f" with adapter {self.adapter_id}" if self.adapter_id else "")
        return f"{len(self.images)} image(s) from {self.model}{how}{note}"


@dataclass(frozen=True, slots=True)
class GeneratorCapabilities:
    """What a backend can do beyond text-to-image; the gate checks a request against it before
    anything is audited, so an unsupported mode is a clear 400, not a refusal mid-flow."""

    modes: frozenset[GenerationMode] = frozenset({GenerationMode.txt2img})
    adapters: bool = False
    """Loads a subject's LoRA adapter per job, and trains adapters."""


TEXT_ONLY = GeneratorCapabilities()


def capabilities_of(generator: object) -> GeneratorCapabilities:
    """A backend's capabilities; one that declares none does text-to-image only (upstream
    services, simple test fakes)."""
    declared = getattr(generator, "capabilities", TEXT_ONLY)
    return declared if isinstance(declared, GeneratorCapabilities) else TEXT_ONLY


@runtime_checkable
class Generator(Protocol):
    """A backend that turns an approved job into images.

    ``generate`` blocks: the gateway runs it in a worker thread under the stage's time budget.
    Implementations raise :class:`policies.errors.StageError` (or a subclass) for failures
    inside the model, never a foreign exception. ``close`` releases the model and device memory.
    """

    @property
    def name(self) -> str:
        """What the audit and the manifest call this model (a directory or service name)."""
        ...

    @property
    def untrained(self) -> bool:
        """True for the project's own tiny test pipeline: its outputs are noise."""
        ...

    def generate(self, job: GenerationJob) -> GenerationOutput: ...

    def close(self) -> None: ...
