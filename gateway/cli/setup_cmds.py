"""Set-up commands: signing and watermark keys, the tiny model, the server, the demo."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from consentry.gateway.cli.common import load_settings, quiet_model_libraries
from consentry.policies.errors import ConflictError


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Signing keys (replaced only with --force) and the watermark keyring (never replaced).

    The watermark keyring is made first and kept on --force: a new signing certificate only
    costs trust in old manifests, but a lost watermark key makes every released mark unreadable.
    An existing deployment that predates watermark keys gets one here without --force.
    """
    from consentry.provenance.keys import init_dev_keys
    from consentry.provenance.watermark_keys import KEYRING_DIR, WatermarkKeyring

    settings = load_settings()
    assert settings.keys_dir is not None
    had_ring = WatermarkKeyring.exists(settings.keys_dir)
    ring = WatermarkKeyring.load_or_create(settings.keys_dir)
    try:
        keys = init_dev_keys(settings.keys_dir, force=args.force)
    except ConflictError:
        if had_ring:
            raise
        keys = None
    if had_ring:
        print(
            f"watermark keys kept: {len(ring)} key(s), current {ring.current.id} "
            "(never replaced, not even by --force: every released mark was made with one of them)"
        )
    else:
        print(f"watermark key {ring.current.id} created in {settings.keys_dir / KEYRING_DIR}")
        print("  Back it up: without it no released image's watermark can be read.")
    if keys is None:
        print(f"signing keys already exist in {settings.keys_dir}: kept (pass --force to replace them)")
        return 0
    print(f"development CA and ES256 signing certificate written to {settings.keys_dir}")
    print(f"  CA certificate: {keys.ca_cert}\n  signing chain:  {keys.cert_chain}")
    print("These are for development only: use a certificate from a C2PA-trusted CA in production.")
    return 0


def cmd_keys_rotate_watermark(args: argparse.Namespace) -> int:
    from consentry.provenance.watermark_keys import WatermarkKeyring

    settings = load_settings()
    assert settings.keys_dir is not None
    ring = WatermarkKeyring.rotate(settings.keys_dir)
    print(f"current watermark key: {ring.current.id}")
    print(f"{len(ring)} key(s) decode: {', '.join(k.id for k in ring.keys)}")
    print("Restart running gateways: they embed with the key that was current when they started.")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from consentry.generation.tiny import build_tiny_pipeline

    settings = load_settings()
    out = Path(args.dir) if args.dir else settings.model_dir
    assert out is not None
    quiet_model_libraries()
    path = build_tiny_pipeline(out)
    print(f"tiny UNTRAINED diffusers pipeline saved to {path}")
    print("It produces noise-like images: it exists to run the gate offline, not to make pictures.")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from consentry.gateway.storage.db import Database

    settings = load_settings()  # fail early, with exit 2, on a bad configuration
    quiet_model_libraries()

    async def migrate() -> None:
        # Once, here, before the workers start: N workers must not race to create the schema.
        db = Database(settings.database_url)
        try:
            await db.migrate()
        finally:
            await db.dispose()

    asyncio.run(migrate())
    uvicorn.run(
        "consentry.gateway.plugin:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from consentry.gateway.demo import run_demo

    settings = load_settings()
    quiet_model_libraries()
    return asyncio.run(run_demo(settings, Path(args.out) if args.out else None))
