"""What the Gate's operations take: plain typed requests with image files as bytes.

No base64 and no HTTP here: the HTTP schemas (:mod:`consentry.gateway.schemas`) and the CLI
decode their own wire formats into these. Images stay as the uploaded file bytes until the Gate
decodes them (under the configured limits, in a worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from consentry.generation.base import GenerationMode
from consentry.policies.consent import Purpose


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessAnswer:
    """The answer to a self-enrollment challenge: one frame per requested pose, in order."""

    challenge_id: str
    nonce: str
    """The secret returned with the challenge, to the principal that asked for it."""
    frames: tuple[bytes, ...]
    """Image files of the person being enrolled, unmirrored, each showing the pose asked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentRequest:
    """Enroll one protected person from photos that each show exactly that person."""

    label: str
    """The operator's label for the identity; never leaves the gateway."""
    photos: tuple[bytes, ...]
    """Image files (JPEG, PNG, ...), each with exactly one face."""
    keep_photos: bool = False
    """Keep the photos, encrypted under the identity's data key, so that an ``adapter_training``
    grant with ``use_enrollment_photos`` can train on them; erasure destroys them."""
    liveness: LivenessAnswer | None = None
    """With an answer to a challenge: the person enrolls themself and proves presence; the
    identity is then ``self_attested_with_liveness`` (else ``operator_attested``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRequest:
    """Record a subject's consent for one principal."""

    identity_id: str
    principal: str
    """Grantee principal id or name."""
    purposes: tuple[Purpose, ...]
    attested_by: str
    """Who collected the consent."""
    consent_text_sha256: str
    """SHA-256 (hex) of the consent text the subject was shown."""
    deny_terms: tuple[str, ...] = ()
    expires_at: datetime | None = None
    max_uses: int | None = None
    use_enrollment_photos: bool = False
    """With ``adapter_training``: the adapter may learn from the photos kept at enrollment."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """Generate images, of a consenting subject when ``subject_id`` names one. ``None`` sizes and
    steps take the settings' defaults; ranges are checked against :mod:`consentry.policies.limits`
    by the wire schema and again by the generation job.

    Without a subject there is no grant to check, but the deployment's prompt rules hold and no
    face in a reference or an output may be an enrolled (protected) identity."""

    prompt: str
    subject_id: str | None = None
    purpose: Purpose | None = None
    """Required with a subject: the grant must cover it."""
    negative_prompt: str = ""
    seed: int = 0
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    references: tuple[bytes, ...] = field(default=())
    """Reference photo files of the subject."""
    mode: GenerationMode = GenerationMode.txt2img
    """``img2img`` starts from the first reference photo; ``ip_adapter`` conditions on them."""
    strength: float = 0.6
    """img2img: how far the reference is re-drawn, in (0, 1]."""
    adapter: bool = False
    """Use the subject's LoRA adapter (trained under an ``adapter_training`` grant)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterTrainingRequest:
    """Train a LoRA adapter of a subject who granted ``adapter_training`` to the caller. ``None``
    parameters take the settings' defaults."""

    identity_id: str
    photos: tuple[bytes, ...] = ()
    """Training photos, each passing the reference face rules for the subject; empty means the
    photos kept at enrollment, which the grant must allow (``use_enrollment_photos``)."""
    steps: int | None = None
    rank: int | None = None
    prior_images: int | None = None
