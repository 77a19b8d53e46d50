"""Consent commands: principals, enrollment, grants, revocation."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from typing import TYPE_CHECKING

from consentry.gateway.cli.common import local_actor, parse_time, read_file, read_files, with_gate
from consentry.gateway.requests import EnrollmentRequest, LivenessAnswer
from consentry.policies import codes
from consentry.policies.consent import Attestation
from consentry.policies.errors import BadInputError

if TYPE_CHECKING:
    # Only for annotations: with_gate imports the gate once the command's input is checked.
    from consentry.gateway.gate import Gate


def cmd_principal_add(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        issued = await gate.create_principal(local_actor(), args.name, args.role)
        print(
            json.dumps(
                {
                    "id": issued.principal.id,
                    "role": args.role,
                    "key_id": issued.key_id,
                    "api_key": issued.secret,
                }
            )
        )
        print("Store the API key now: it is not kept and cannot be shown again.", file=sys.stderr)
        return 0

    return asyncio.run(with_gate(run))


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.library:
        if args.photos:
            raise BadInputError("give photo files or --library, not both", code=codes.INPUT_INVALID)
        from consentry.gateway.cli.library_cmd import cmd_enroll_library

        return cmd_enroll_library(args)
    if not args.photos or not args.label:
        raise BadInputError(
            "enroll needs --label and photo files (or --library DIR)", code=codes.INPUT_INVALID
        )
    answer = [args.challenge is not None, args.nonce is not None, bool(args.frame)]
    if any(answer) and not all(answer):
        raise BadInputError(
            "a self-enrollment answer needs --challenge, --nonce and --frame together",
            code=codes.INPUT_INVALID,
        )
    liveness = None
    if all(answer):
        liveness = LivenessAnswer(
            challenge_id=args.challenge, nonce=args.nonce, frames=read_files(args.frame)
        )
    req = EnrollmentRequest(
        label=args.label, photos=read_files(args.photos), keep_photos=args.keep_photos, liveness=liveness
    )

    async def run(gate: Gate) -> int:
        identity = await gate.enroll(local_actor(), req)
        shown: dict[str, object] = {"id": identity.id, "label": identity.label, "photos": len(req.photos)}
        if liveness is not None:
            shown["attestation"] = Attestation.self_attested_with_liveness.value
        print(json.dumps(shown))
        return 0

    return asyncio.run(with_gate(run, models=True))


def cmd_enrollments_challenge(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        issued = await gate.enrollment_challenge(local_actor())
        shown = {
            "challenge_id": issued.id,
            "nonce": issued.nonce,
            "expires_at": issued.expires_at.isoformat(),
            "poses": list(issued.poses),
        }
        print(json.dumps(shown))
        return 0

    return asyncio.run(with_gate(run))


def cmd_grant(args: argparse.Namespace) -> int:
    from consentry.gateway.schemas import GrantBody

    text = read_file(args.consent_text) if args.consent_text else b"consentry default consent text v1"
    # The HTTP body schema checks the same rules (future expiry, use counts) for the CLI.
    req = GrantBody(
        identity_id=args.identity,
        principal=args.principal,
        purposes=args.purpose,
        deny_terms=args.deny or [],
        expires_at=parse_time(args.expires),
        max_uses=args.max_uses,
        attested_by=args.attested_by,
        consent_text_sha256=hashlib.sha256(text).hexdigest(),
        use_enrollment_photos=args.use_enrollment_photos,
    ).to_request()

    async def run(gate: Gate) -> int:
        grant = await gate.grant(local_actor(), req)
        print(
            json.dumps({"id": grant.id, "identity_id": grant.identity_id, "purposes": list(grant.purposes)})
        )
        return 0

    return asyncio.run(with_gate(run))


def cmd_revoke(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        await gate.revoke(local_actor(), args.grant)
        print(json.dumps({"id": args.grant, "revoked": True}))
        return 0

    return asyncio.run(with_gate(run))


def cmd_erase(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        counts = await gate.erase(local_actor(), args.identity)
        print(json.dumps({"id": args.identity, "erased": True, **counts}))
        return 0

    return asyncio.run(with_gate(run))


def cmd_key_revoke(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        await gate.revoke_key(local_actor(), args.key)
        print(json.dumps({"id": args.key, "revoked": True}))
        return 0

    return asyncio.run(with_gate(run))
