"""Commands that use the gate: generate, provenance, audit, calibration."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from consentry.gateway.cli.common import b64_file, load_settings, parse_time, with_gate
from consentry.policies.errors import BadInputError


def cmd_generate(args: argparse.Namespace) -> int:
    from consentry.gateway.schemas import GenerateRequest

    req = GenerateRequest(
        subject_id=args.subject,
        purpose=args.purpose,
        prompt=args.prompt,
        seed=args.seed,
        references=[b64_file(p) for p in args.reference or []],
    )

    async def run(gate: Any) -> int:
        principal = await gate.principals.by_name(args.as_principal)
        release = await gate.generate(principal, req)
        note = "  (UNTRAINED model: the image is noise-like by design)" if release.untrained else ""
        print(
            f"released {release.record_id} watermark={release.watermark} audit_seq={release.audit_seq}{note}"
        )
        for path in release.paths:
            print(f"  {path}")
        return 0

    return asyncio.run(with_gate(run))


def cmd_verify(args: argparse.Namespace) -> int:
    data = b64_file(args.file)

    async def run(gate: Any) -> int:
        report = await gate.verify_provenance(data)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            from consentry.gateway.render import provenance_text

            print(provenance_text(report))
        return 0

    return asyncio.run(with_gate(run))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    async def run(gate: Any) -> int:
        report = await gate.verify_audit(None)
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

    try:
        out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    except OSError as exc:
        raise BadInputError(f"cannot write {args.out}: {exc.strerror}", code="input.file_unwritable") from exc

    async def run(gate: Any) -> int:
        try:
            async for line in export_lines(gate.audit.events(), flt, args.format):
                out.write(line)
        finally:
            if out is not sys.stdout:
                out.close()
        return 0

    return asyncio.run(with_gate(run))


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure face matching on DIR/<person>/<photo> and optionally configure the threshold.

    The report goes to ``--report`` or ``DATA_DIR/calibration-report.html`` (state and
    artefacts live under the data directory, not wherever the command happens to run).
    ``--write-config`` without a file writes the file Settings reads (``config_file()``).
    Nothing is written unless the whole measurement succeeded.
    """
    from consentry.gateway.calibrate import calibrate, scan_photos, write_match_threshold
    from consentry.gateway.calibrate_report import summary_text, write_report
    from consentry.gateway.wiring import build_analyzer
    from consentry.policies.config import config_file

    settings = load_settings()
    root = Path(args.dir)
    photos = scan_photos(root)  # bad folders fail here, before the models load
    result = calibrate(
        photos,
        build_analyzer(settings),
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        root=root,
    )
    report = write_report(
        result,
        Path(args.report) if args.report else settings.data_dir / "calibration-report.html",
        settings.match_threshold,
    )
    config = None
    if args.write_config is not None:
        config = Path(args.write_config) if args.write_config else config_file()
        write_match_threshold(config, result.chosen.point.threshold)
    if args.json:
        out = result.as_dict() | {"report": str(report), "config_written": str(config) if config else None}
        print(json.dumps(out, indent=2))
        return 0
    print(summary_text(result, settings.match_threshold))
    print(f"report: {report}")
    if config is not None:
        print(f"match_threshold = {result.chosen.point.threshold} written to {config}")
    return 0
