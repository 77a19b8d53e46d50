"""Consent rules: does a live grant let this principal generate this subject for this purpose,
with this prompt? Pure functions over plain data, so they are tested without storage."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from consentry.policies import codes
from consentry.policies.decision import Verdict


class Purpose(StrEnum):
    """The closed list of purposes a grant may cover."""

    portrait = "portrait"
    avatar = "avatar"
    marketing = "marketing"
    editorial = "editorial"
    adapter_training = "adapter_training"
    """Train a LoRA adapter of the subject's likeness (a grant to the principal who trains it)."""


class Attestation(StrEnum):
    """How the subject behind an identity (and so its grants) was attested."""

    operator_attested = "operator_attested"
    """An operator enrolled the photos and vouches for the person."""
    self_attested_with_liveness = "self_attested_with_liveness"
    """The person enrolled themself and proved presence by answering a pose challenge."""


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """The parts of a stored grant that decide a request."""

    id: str
    identity_id: str
    principal_id: str
    purposes: tuple[str, ...]
    deny_terms: tuple[str, ...]
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked_at: datetime | None
    use_enrollment_photos: bool = False
    """An ``adapter_training`` grant may let the adapter learn from the photos kept at enrollment;
    otherwise training needs photos supplied with the request."""
    attestation: str = Attestation.operator_attested.value
    """How the subject was attested when the grant was recorded (an :class:`Attestation`)."""

    def summary(self) -> str:
        return f"grant {self.id} is live and covers this request"

    def problem(self, now: datetime) -> tuple[str, str] | None:
        """Why this grant is not live (code, sentence), or None when it is."""
        if self.revoked_at is not None:
            return codes.CONSENT_REVOKED, f"grant {self.id} was revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return codes.CONSENT_EXPIRED, f"grant {self.id} expired at {self.expires_at.isoformat()}"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return (
                codes.CONSENT_EXHAUSTED,
                f"grant {self.id} has been used {self.uses} of {self.max_uses} times",
            )
        return None


@dataclass(frozen=True, slots=True)
class ConsentOutcome:
    """The consent verdict and, when allowed, the grant that allowed it."""

    verdict: Verdict
    grant: GrantTerms | None = None


@dataclass(frozen=True, slots=True)
class Consent:
    """What the consent step hands on: the grant that allows a named subject's likeness, or no
    grant for a request that names no subject (which still passed the deployment's prompt rules)."""

    grant: GrantTerms | None

    def summary(self) -> str:
        if self.grant is None:
            return "no subject named: no grant needed; the deployment's prompt rules pass"
        return self.grant.summary()


def evaluate_prompt(prompt: str, deployment_deny_terms: Iterable[str]) -> Verdict:
    """The content rules every request passes, whether or not it names a subject."""
    bad = denied_terms(prompt, deployment_deny_terms)
    if bad:
        return Verdict.refuse(codes.CONSENT_PROMPT_DENIED, f"the prompt uses denied terms: {', '.join(bad)}")
    return Verdict.allow("the prompt passes the deployment's rules")


def denied_terms(prompt: str, terms: Iterable[str]) -> list[str]:
    """Deny-listed terms found in ``prompt`` as whole words (multi-word terms as phrases)."""
    text = " ".join(re.findall(r"[\w']+", prompt.lower()))
    found = []
    for term in terms:
        phrase = " ".join(re.findall(r"[\w']+", term.lower()))
        if phrase and re.search(rf"(?<![\w']){re.escape(phrase)}(?![\w'])", text):
            found.append(term)
    return found


def evaluate_consent(
    *,
    subject_status: str,
    grants: Sequence[GrantTerms],
    principal_id: str,
    purpose: str,
    prompt: str,
    deployment_deny_terms: Iterable[str],
    now: datetime,
    needs_liveness: bool = False,
) -> ConsentOutcome:
    """Decide the consent stage. ``grants`` are the subject's grants to ``principal_id``;
    ``needs_liveness``: the policy reserves ``purpose`` for subjects who enrolled themselves with
    a liveness proof (only grants recorded for such a subject count)."""
    if subject_status != "active":
        return ConsentOutcome(
            Verdict.refuse(codes.CONSENT_SUBJECT_INACTIVE, f"the subject is {subject_status}")
        )
    mine = [g for g in grants if g.principal_id == principal_id]
    if not mine:
        return ConsentOutcome(
            Verdict.refuse(codes.CONSENT_MISSING, "the subject has not granted consent to this principal")
        )
    live = [g for g in mine if g.problem(now) is None]
    if not live:
        # Report the most recent grant's problem: that is the one the caller expects to work.
        code, reason = mine[-1].problem(now) or (codes.CONSENT_MISSING, "no live grant")
        return ConsentOutcome(Verdict.refuse(code, reason))
    covering = [g for g in live if purpose in g.purposes]
    if not covering:
        return ConsentOutcome(
            Verdict.refuse(codes.CONSENT_PURPOSE, f"no live grant covers the purpose {purpose!r}")
        )
    if needs_liveness:
        # Checked at use as well as when the grant was recorded: a policy that starts reserving
        # this purpose for self-enrolled subjects also stops grants recorded before it did.
        covering = [g for g in covering if g.attestation == Attestation.self_attested_with_liveness]
        if not covering:
            return ConsentOutcome(
                Verdict.refuse(
                    codes.CONSENT_LIVENESS_REQUIRED,
                    f"the policy reserves {purpose!r} for subjects who enrolled themselves with a "
                    "liveness proof; no live grant for it was recorded for such a subject",
                )
            )
    grant = covering[0]
    prompt_rules = evaluate_prompt(prompt, [*deployment_deny_terms, *grant.deny_terms])
    if not prompt_rules.allowed:
        return ConsentOutcome(prompt_rules)
    return ConsentOutcome(Verdict.allow(f"grant {grant.id} covers {purpose!r}"), grant)
