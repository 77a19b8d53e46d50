"""Roles and what each may do. Routes name an action; this table is the only place that says
which roles may perform it."""

from __future__ import annotations

from enum import StrEnum

from consentry.policies.errors import ForbiddenError


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    requester = "requester"
    auditor = "auditor"


class Action(StrEnum):
    manage_principals = "manage_principals"
    enroll = "enroll"
    enrollment_challenge = "enrollment_challenge"
    grant = "grant"
    revoke = "revoke"
    erase = "erase"
    generate = "generate"
    read_audit = "read_audit"
    verify_provenance = "verify_provenance"
    train_adapter = "train_adapter"
    read_adapters = "read_adapters"
    delete_adapter = "delete_adapter"
    # The console (issue 14): who may sign in, and who may list identities and their grants.
    console_sign_in = "console_sign_in"
    read_identities = "read_identities"


PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.manage_principals: frozenset({Role.admin}),
    Action.enroll: frozenset({Role.admin, Role.operator}),
    # A self-enrollment app (kiosk, onboarding flow) holds an operator key: it asks for the
    # challenge and sends the person's answer; the liveness proof, not the key, attests the person.
    Action.enrollment_challenge: frozenset({Role.admin, Role.operator}),
    Action.grant: frozenset({Role.admin, Role.operator}),
    Action.revoke: frozenset({Role.admin, Role.operator}),
    Action.erase: frozenset({Role.admin, Role.operator}),
    Action.generate: frozenset({Role.requester}),
    Action.read_audit: frozenset({Role.admin, Role.auditor}),
    Action.verify_provenance: frozenset({Role.admin, Role.auditor, Role.operator, Role.requester}),
    # A requester trains (under its own adapter_training grant) and sees only its own adapters.
    Action.train_adapter: frozenset({Role.requester}),
    Action.read_adapters: frozenset({Role.admin, Role.operator, Role.auditor, Role.requester}),
    Action.delete_adapter: frozenset({Role.admin, Role.operator}),
    # A requester is a service, not a person: it never signs in to the console.
    Action.console_sign_in: frozenset({Role.admin, Role.operator, Role.auditor}),
    # Identities, grants (evidence hashes, uses) and adapters; never templates or photos.
    Action.read_identities: frozenset({Role.admin, Role.operator, Role.auditor}),
}


def require(role: str, action: Action) -> None:
    """Raise ForbiddenError unless ``role`` may perform ``action``."""
    if role not in {r.value for r in PERMISSIONS[action]}:
        raise ForbiddenError(f"role {role!r} may not {action.value.replace('_', ' ')}")
