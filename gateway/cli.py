"""The ``consentry`` command.

Exit codes: 0 success; 2 bad input or configuration (a clear message, nothing written);
3 the gate refused the request (the refusal is audited); 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.storage.principals import PrincipalView
from policies.config import Settings
from policies.errors import ConsentryError, RefusedError, StageError

# Local commands act with the rights of whoever can read the data directory: the operator.
LOCAL_ACTOR = PrincipalView(id="local-cli", name="local-cli", role="admin")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConsentryError(f"invalid configuration: {exc}", code="config.invalid") from exc


def _b64_file(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise ConsentryError(f"cannot read {path}: {exc.strerror}", code="input.file_unreadable") from exc


async def _with_gate(fn: Callable[[Any], Awaitable[int]]) -> int:
    from gateway.wiring import open_gate

    gate = await open_gate(_settings())
    try:
        return await fn(gate)
    finally:
        await gate.close()


def cmd_keys_init(args: argparse.Namespace) -> int:
    from provenance.keys import init_dev_keys

    settings = _settings()
    assert settings.keys_dir is not None
    keys = init_dev_keys(settings.keys_dir, force=args.force)
    print(f"development CA and ES256 signing certificate written to {settings.keys_dir}")
    print(f"  CA certificate: {keys.ca_cert}\n  signing chain:  {keys.cert_chain}")
    print("These are for development only: use a certificate from a C2PA-trusted CA in production.")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from generation.tiny import build_tiny_pipeline

    settings = _settings()
    out = Path(args.dir) if args.dir else settings.model_dir
    assert out is not None
    path = build_tiny_pipeline(out)
    print(f"tiny UNTRAINED diffusers pipeline saved to {path}")
    print("It produces noise-like images: it exists to run the gate offline, not to make pictures.")
    return 0


def cmd_principal_add(args: argparse.Namespace) -> int:
    async def run(gate: Any) -> int:
        issued = await gate.principals.create(args.name, args.role)
        print(json.dumps({"id": issued.principal.id, "role": args.role, "api_key": issued.secret}))
        print("Store the API key now: it is not kept and cannot be shown again.", file=sys.stderr)
        return 0

    return asyncio.run(_with_gate(run))


def cmd_enroll(args: argparse.Namespace) -> int:
    from gateway.schemas import EnrollRequest

    req = EnrollRequest(label=args.label, photos=[_b64_file(p) for p in args.photos])

    async def run(gate: Any) -> int:
        identity = await gate.enroll(LOCAL_ACTOR, req)
        print(json.dumps({"id": identity.id, "label": identity.label, "photos": len(req.photos)}))
        return 0

    return asyncio.run(_with_gate(run))


def cmd_grant(args: argparse.Namespace) -> int:
    from gateway.schemas import GrantRequest

    text = Path(args.consent_text).read_bytes() if args.consent_text else b"consentry default consent text v1"
    req = GrantRequest(
        identity_id=args.identity,
        principal=args.principal,
        purposes=args.purpose,
        deny_terms=args.deny or [],
        expires_at=datetime.fromisoformat(args.expires) if args.expires else None,
        max_uses=args.max_uses,
        attested_by=args.attested_by,
        consent_text_sha256=hashlib.sha256(text).hexdigest(),
    )

    async def run(gate: Any) -> int:
        grant = await gate.grant(LOCAL_ACTOR, req)
        print(
            json.dumps({"id": grant.id, "identity_id": grant.identity_id, "purposes": list(grant.purposes)})
        )
        return 0

    return asyncio.run(_with_gate(run))


def cmd_revoke(args: argparse.Namespace) -> int:
    async def run(gate: Any) -> int:
        await gate.revoke(LOCAL_ACTOR, args.grant)
        print(json.dumps({"id": args.grant, "revoked": True}))
        return 0

    return asyncio.run(_with_gate(run))


def cmd_generate(args: argparse.Namespace) -> int:
    from gateway.schemas import GenerateRequest

    req = GenerateRequest(
        subject_id=args.subject,
        purpose=args.purpose,
        prompt=args.prompt,
        seed=args.seed,
        references=[_b64_file(p) for p in args.reference or []],
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

    return asyncio.run(_with_gate(run))


def cmd_verify(args: argparse.Namespace) -> int:
    data = _b64_file(args.file)

    async def run(gate: Any) -> int:
        report = await gate.verify_provenance(data)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            from gateway.render import provenance_text

            print(provenance_text(report))
        return 0

    return asyncio.run(_with_gate(run))


def cmd_audit_verify(args: argparse.Namespace) -> int:
    async def run(gate: Any) -> int:
        report = await gate.verify_audit(None)
        if args.json:
            print(json.dumps(report.as_dict()))
        else:
            state = "intact" if report.ok else f"BROKEN at seq {report.first_bad_seq}: {report.problem}"
            print(f"audit chain {state}; {report.events} events; head {report.head[:16]}…")
        return 0 if report.ok else 4

    return asyncio.run(_with_gate(run))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    _settings()  # fail early, with exit 2, on a bad configuration
    uvicorn.run(
        "gateway.plugin:create_app", factory=True, host=args.host, port=args.port, workers=args.workers
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return asyncio.run(run_demo(_settings(), Path(args.out) if args.out else None))


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure face matching on DIR/<person>/<photo> and optionally configure the threshold.

    The report goes to ``--report`` or ``DATA_DIR/calibration-report.html`` (state and
    artefacts live under the data directory, not wherever the command happens to run).
    ``--write-config`` without a file writes the file Settings reads (``config_file()``).
    Nothing is written unless the whole measurement succeeded.
    """
    from gateway.calibrate import calibrate, scan_photos, write_match_threshold
    from gateway.calibrate_report import summary_text, write_report
    from gateway.wiring import build_analyzer
    from policies.config import config_file

    settings = _settings()
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


def build_parser() -> argparse.ArgumentParser:
    from gateway.cli_parser import build

    return build(
        {
            "demo": cmd_demo,
            "serve": cmd_serve,
            "keys_init": cmd_keys_init,
            "models_tiny": cmd_models_tiny,
            "principal_add": cmd_principal_add,
            "enroll": cmd_enroll,
            "grant": cmd_grant,
            "revoke": cmd_revoke,
            "generate": cmd_generate,
            "verify": cmd_verify,
            "audit_verify": cmd_audit_verify,
            "calibrate": cmd_calibrate,
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CONSENTRY_LOG_LEVEL", "WARNING"))
    parser = build_parser()
    args = parser.parse_args(argv)
    from gateway.wiring import quiet_libraries

    quiet_libraries()
    try:
        return int(args.func(args))
    except RefusedError as exc:
        print(f"refused [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 3
    except StageError as exc:
        print(f"refused [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 3
    except ConsentryError as exc:
        print(f"error [{exc.code}]: {exc.detail}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error [input.invalid]: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
