"""Commands that use the gate: generate, provenance, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from consentry.gateway.cli.common import local_actor, parse_time, read_file, read_files, with_gate
from consentry.gateway.requests import GenerationRequest
from consentry.generation.base import GenerationMode
from consentry.policies import codes
from consentry.policies.consent import Purpose
from consentry.policies.errors import BadInputError

if TYPE_CHECKING:
    # Only for annotations: the gate imports the detectors and generators, which the command
    # imports through with_gate once its input has been read and checked.
    from consentry.gateway.gate import Gate


def cmd_generate(args: argparse.Namespace) -> int:
    req = GenerationRequest(
        subject_id=args.subject,
        purpose=Purpose(args.purpose) if args.purpose else None,
        prompt=args.prompt,
        seed=args.seed,
        references=read_files(args.reference),
        mode=GenerationMode(args.mode),
        strength=args.strength,
        adapter=args.adapter,
    )

    async def run(gate: Gate) -> int:
        principal = await gate.principal_named(local_actor(), args.as_principal)
        release = await gate.generate(principal, req)
        note = "  (UNTRAINED model: the image is noise-like by design)" if release.untrained else ""
        how = f" mode={release.mode}" + (f" adapter={release.adapter_id}" if release.adapter_id else "")
        print(
            f"released {release.record_id} watermark={release.watermark} audit_seq={release.audit_seq}"
            f"{how}{note}"
        )
        for path in release.paths:
            print(f"  {path}")
        return 0

    return asyncio.run(with_gate(run, models=True))


def cmd_verify(args: argparse.Namespace) -> int:
    data = read_file(args.file)
    from consentry.gateway.cli.render import provenance_text  # imports the watermark code

    async def run(gate: Gate) -> int:
        report = await gate.verify_provenance(local_actor(), data)
        print(json.dumps(report.as_dict(), indent=2, default=str) if args.json else provenance_text(report))
        return 0

    return asyncio.run(with_gate(run))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    async def run(gate: Gate) -> int:
        report = await gate.verify_audit(local_actor())
        if args.json:
            print(json.dumps(report.as_dict()))
        else:
            state = "intact" if report.ok else f"BROKEN at seq {report.first_bad_seq}: {report.problem}"
            print(f"audit chain {state}; {report.events} events; head {report.head[:16]}…")
        return 0 if report.ok else 4

    return asyncio.run(with_gate(run))


def cmd_audit_export(args: argparse.Namespace) -> int:
    from consentry.provenance.audit_export import AuditFilter, export_lines

    flt = AuditFilter(
        identity_id=args.identity,
        principal_id=args.principal,
        decision=args.decision,
        since=parse_time(args.since),
        until=parse_time(args.until),
    )
    # A file is written under a temporary name and renamed at the end: a failed export leaves
    # no half-written file behind.
    target = Path(args.out) if args.out else None
    tmp = target.with_name(f".{target.name}.partial") if target else None
    try:
        out: TextIO = open(tmp, "w", newline="", encoding="utf-8") if tmp else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise BadInputError(
            f"cannot write {args.out}: {exc.strerror}", code=codes.INPUT_FILE_UNWRITABLE
        ) from exc

    async def run(gate: Gate) -> int:
        async for line in export_lines(gate.audit_events(local_actor()), flt, args.format):
            out.write(line)
        return 0

    try:
        code = asyncio.run(with_gate(run))
    except BaseException:
        if tmp:
            out.close()
            tmp.unlink(missing_ok=True)
        raise
    if tmp and target:
        out.close()
        os.replace(tmp, target)
    return code
