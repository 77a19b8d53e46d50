"""Argument definitions of the ``consentry`` command (kept apart from what the commands do).

Nothing here imports a command's implementation: each sub-command records its key in
``args.handler`` and :func:`consentry.gateway.cli.main` imports the handler when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from consentry.generation.base import GenerationMode
from consentry.policies.consent import Purpose

Handler = Callable[[argparse.Namespace], int]


def build(handlers: Mapping[str, object]) -> argparse.ArgumentParser:
    """The parser; ``handlers`` maps each command key to its handler (only its keys are used)."""
    parser = argparse.ArgumentParser(
        prog="consentry", description="Consent and provenance gateway for personalized image generation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, key: str, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        if key not in handlers:
            raise KeyError(f"no handler for command {key!r}")
        p.set_defaults(handler=key)
        return p

    demo = command("demo", "demo", "Run the whole gate offline on public-domain photos; print decisions")
    demo.add_argument("--out", help="folder for released images (default DATA_DIR/demo/outputs)")

    serve = command("serve", "serve", "Run the HTTP gateway (OpenAPI docs at /schema)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    keys = sub.add_parser("keys", help="Signing and watermark keys").add_subparsers(
        dest="keys_command", required=True
    )
    init = command(
        "init", "keys_init", "Create a development CA, ES256 signing certificate and watermark key", keys
    )
    init.add_argument(
        "--force", action="store_true", help="replace existing signing keys (never the watermark keys)"
    )
    command(
        "rotate-watermark",
        "keys_rotate_watermark",
        "Make a new current watermark key; older keys still decode released images",
        keys,
    )

    models = sub.add_parser("models", help="Generation models").add_subparsers(
        dest="models_command", required=True
    )
    tiny = command("tiny", "models_tiny", "Build and save the tiny untrained pipeline", models)
    tiny.add_argument("dir", nargs="?", help="target folder (default DATA_DIR/models/tiny)")

    principal = sub.add_parser("principal", help="Principals and API keys").add_subparsers(
        dest="principal_command", required=True
    )
    add = command("add", "principal_add", "Create a principal and print its API key once", principal)
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "operator", "requester", "auditor"])
    revoke_key = command(
        "revoke-key", "key_revoke", "Revoke an API key (fails from the next request)", principal
    )
    revoke_key.add_argument("key", help="key id (key_…)")

    enroll = command("enroll", "enroll", "Enroll a protected identity from photos of one person")
    enroll.add_argument("--label", help="operator's label for the identity (required with photo files)")
    enroll.add_argument("photos", nargs="*", help="photo files, each with exactly one face")
    enroll.add_argument(
        "--library", metavar="DIR", help="find, group and enroll a person from a photo library"
    )
    enroll.add_argument("--pick", type=int, metavar="N", help="with --library: enroll group N (default: ask)")
    enroll.add_argument("--sheets", metavar="OUT_DIR", help="with --library: folder for the contact sheets")
    enroll.add_argument(
        "--keep-photos",
        action="store_true",
        help="keep the photos (encrypted under the identity's key) for adapter training",
    )
    enroll.add_argument("--challenge", metavar="ID", help="self-enrollment: the challenge answered (chl_…)")
    enroll.add_argument("--nonce", metavar="N", help="self-enrollment: the challenge's nonce")
    enroll.add_argument(
        "--frame",
        action="append",
        metavar="FILE",
        help="self-enrollment: a frame of the person per requested pose, in order (repeatable)",
    )

    enrollments = sub.add_parser("enrollments", help="Self-enrollment").add_subparsers(
        dest="enrollments_command", required=True
    )
    command(
        "challenge",
        "enrollments_challenge",
        "Issue a one-time self-enrollment challenge (head poses, nonce, expiry) as JSON",
        enrollments,
    )

    erase = command("erase", "erase", "Erase an identity: crypto-shred its templates, revoke its grants")
    erase.add_argument("identity", help="identity id (idn_…)")

    grant = command("grant", "grant", "Record a subject's consent for a principal")
    grant.add_argument("identity", help="identity id (idn_…)")
    grant.add_argument("--principal", required=True, help="grantee principal name or id")
    grant.add_argument("--purpose", action="append", required=True, choices=[p.value for p in Purpose])
    grant.add_argument("--deny", action="append", help="a prompt term this grant refuses (repeatable)")
    grant.add_argument("--expires", help="ISO 8601 expiry with timezone, e.g. 2027-01-01T00:00:00+00:00")
    grant.add_argument("--max-uses", type=int)
    grant.add_argument("--attested-by", required=True, help="who collected the consent")
    grant.add_argument("--consent-text", help="file with the consent text shown to the subject")
    grant.add_argument(
        "--use-enrollment-photos",
        action="store_true",
        help="with --purpose adapter_training: the adapter may learn from the enrollment photos",
    )

    revoke = command("revoke", "revoke", "Revoke a grant (effective on the next request)")
    revoke.add_argument("grant", help="grant id (gnt_…)")

    gen = command("generate", "generate", "Generate through the gate as a requester principal")
    gen.add_argument("--as", dest="as_principal", required=True, help="requester principal name")
    gen.add_argument("--subject", help="identity id (idn_…) of the consenting subject; omit to name nobody")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--purpose", choices=[p.value for p in Purpose], help="required with --subject")
    gen.add_argument("--reference", action="append", help="reference photo of the subject (repeatable)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--mode", choices=[m.value for m in GenerationMode], default=GenerationMode.txt2img.value
    )
    gen.add_argument("--strength", type=float, default=0.6, help="img2img: how far the reference is re-drawn")
    gen.add_argument("--adapter", action="store_true", help="use the subject's trained LoRA adapter")

    adapters = sub.add_parser("adapters", help="Per-identity LoRA adapters").add_subparsers(
        dest="adapters_command", required=True
    )
    train = command(
        "train",
        "adapters_train",
        "Train a subject's LoRA adapter (needs an adapter_training grant)",
        adapters,
    )
    train.add_argument("identity", help="identity id (idn_…)")
    train.add_argument("--as", dest="as_principal", required=True, help="requester principal name")
    train.add_argument("--steps", type=int)
    train.add_argument("--rank", type=int)
    train.add_argument("--prior-images", type=int, help="class images for prior preservation (0: none)")
    train.add_argument(
        "--photo",
        action="append",
        help="training photo of the subject (repeatable; default: enrollment photos)",
    )
    listing = command("list", "adapters_list", "List adapters, optionally of one identity", adapters)
    listing.add_argument("identity", nargs="?", help="identity id (idn_…)")
    listing.add_argument("--json", action="store_true")
    remove = command("delete", "adapters_delete", "Delete an adapter and its encrypted weights", adapters)
    remove.add_argument("adapter", help="adapter id (adp_…)")

    verify = command("verify", "verify", "Show the provenance of an image: C2PA, watermark, record")
    verify.add_argument("file")
    verify.add_argument("--json", action="store_true")

    wm = sub.add_parser("watermark", help="Watermark tools").add_subparsers(dest="wm_command", required=True)
    embed = command("embed", "watermark_embed", "Embed a watermark payload into an image", wm)
    embed.add_argument("input")
    embed.add_argument("output", help="output file (.png, .jpg, .webp)")
    embed.add_argument("--payload", help="16 hex digits (default: random)")
    decode = command("decode", "watermark_decode", "Decode a watermark from an image", wm)
    decode.add_argument("input")
    decode.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="Audit log").add_subparsers(dest="audit_command", required=True)
    av = command("verify", "audit_verify", "Re-compute the audit hash chain", audit)
    av.add_argument("--json", action="store_true")
    ex = command("export", "audit_export", "Export audit events as JSON Lines or CSV", audit)
    ex.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ex.add_argument("--identity", help="only events about this identity id")
    ex.add_argument("--principal", help="only events by or for this principal id")
    ex.add_argument("--decision", help="only generations with this decision code (e.g. released)")
    ex.add_argument("--since", help="ISO 8601 time, inclusive")
    ex.add_argument("--until", help="ISO 8601 time, exclusive")
    ex.add_argument("--out", help="file to write (default: standard output)")

    policy = sub.add_parser("policy", help="The policy file").add_subparsers(
        dest="policy_command", required=True
    )
    check = command(
        "check",
        "policy_check",
        "Validate a policy file; with --prompt, show how its rules treat a prompt",
        policy,
    )
    check.add_argument(
        "file", nargs="?", help="policy file (default: the configured policy_file, else the shipped one)"
    )
    check.add_argument("--prompt", help="a prompt to run through the policy's prompt rules")
    check.add_argument(
        "--purpose", choices=[p.value for p in Purpose], help="with --prompt: add this purpose's rules"
    )
    check.add_argument("--json", action="store_true")

    cal = command(
        "calibrate", "calibrate", "Measure face matching on DIR/<person>/<photo>; suggest a threshold"
    )
    cal.add_argument("dir", help="folder with one sub-folder of photos per person")
    cal.add_argument("--json", action="store_true")
    cal.add_argument("--report", help="HTML report file (default DATA_DIR/calibration-report.html)")
    cal.add_argument(
        "--write-config",
        nargs="?",
        const="",
        metavar="FILE",
        help="write the chosen match_threshold into FILE (default: the consentry.toml Settings reads)",
    )
    return parser
