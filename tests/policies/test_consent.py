"""Consent rules over plain data: each refusal has its own stable code."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from consentry.policies.consent import GrantTerms, denied_terms, evaluate_consent
from consentry.policies.errors import ForbiddenError
from consentry.policies.roles import PERMISSIONS, Action, Role, require

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LIVE = GrantTerms(
    id="gnt_1",
    identity_id="idn_a",
    principal_id="prn_p",
    purposes=("portrait",),
    deny_terms=("uniform",),
    expires_at=NOW + timedelta(days=1),
    max_uses=3,
    uses=0,
    revoked_at=None,
)


def decide(grants: list[GrantTerms], **kw: object) -> tuple[bool, str]:
    args: dict = {
        "subject_status": "active",
        "grants": grants,
        "principal_id": "prn_p",
        "purpose": "portrait",
        "prompt": "a portrait in a garden",
        "deployment_deny_terms": ["nude"],
        "now": NOW,
    }
    args.update(kw)
    outcome = evaluate_consent(**args)
    return outcome.verdict.allowed, outcome.verdict.code


@pytest.mark.parametrize(
    ("grants", "kw", "expected"),
    [
        ([LIVE], {}, (True, "ok")),
        ([], {}, (False, "consent.missing")),
        ([LIVE], {"principal_id": "prn_q"}, (False, "consent.missing")),
        ([replace(LIVE, revoked_at=NOW)], {}, (False, "consent.revoked")),
        ([replace(LIVE, expires_at=NOW)], {}, (False, "consent.expired")),
        ([replace(LIVE, uses=3)], {}, (False, "consent.exhausted")),
        ([LIVE], {"purpose": "marketing"}, (False, "consent.purpose_not_granted")),
        ([LIVE], {"prompt": "her in a Uniform"}, (False, "consent.prompt_denied")),
        ([LIVE], {"prompt": "NUDE portrait"}, (False, "consent.prompt_denied")),
        ([LIVE], {"subject_status": "erased"}, (False, "consent.subject_inactive")),
        ([replace(LIVE, revoked_at=NOW), replace(LIVE, id="gnt_2")], {}, (True, "ok")),
    ],
)
def test_consent_decisions(grants: list[GrantTerms], kw: dict, expected: tuple[bool, str]) -> None:
    assert decide(grants, **kw) == expected


def test_allowed_outcome_names_the_grant() -> None:
    outcome = evaluate_consent(
        subject_status="active",
        grants=[LIVE],
        principal_id="prn_p",
        purpose="portrait",
        prompt="x",
        deployment_deny_terms=[],
        now=NOW,
    )
    assert outcome.grant == LIVE


def test_denied_terms_match_whole_words_and_phrases() -> None:
    assert denied_terms("uniformly lit", ["uniform"]) == []
    assert denied_terms("in a school  uniform!", ["school uniform"]) == ["school uniform"]


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", list(Role))
def test_role_table(role: Role, action: Action) -> None:
    if role in PERMISSIONS[action]:
        require(role.value, action)
    else:
        with pytest.raises(ForbiddenError):
            require(role.value, action)


def test_only_requesters_generate_and_auditors_cannot_enroll() -> None:
    assert PERMISSIONS[Action.generate] == {Role.requester}
    assert Role.auditor not in PERMISSIONS[Action.enroll]


def test_a_purpose_reserved_for_liveness_is_checked_at_use_too() -> None:
    """A grant recorded before the policy reserved its purpose no longer allows it."""
    from consentry.policies.consent import Attestation

    assert decide([LIVE], needs_liveness=True) == (False, "consent.liveness_required")
    proven = replace(LIVE, attestation=Attestation.self_attested_with_liveness.value)
    assert decide([LIVE, proven], needs_liveness=True) == (True, "ok")
    assert decide([LIVE], needs_liveness=False) == (True, "ok")
