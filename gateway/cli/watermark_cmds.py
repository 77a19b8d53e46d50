"""Operator tools for trust-and-safety checks: embed or decode a watermark without the gate."""

from __future__ import annotations

import argparse
import io
import json
import secrets
from pathlib import Path

from consentry.gateway.cli.common import load_settings, read_file
from consentry.policies.errors import BadInputError


def _image(path: str):  # type: ignore[no-untyped-def]
    from consentry.detectors.images import decode_image

    s = load_settings()
    return decode_image(read_file(path), max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)


def cmd_watermark_embed(args: argparse.Namespace) -> int:
    from consentry.provenance.watermark import Watermarker

    try:
        payload = bytes.fromhex(args.payload) if args.payload else secrets.token_bytes(8)
    except ValueError as exc:
        raise BadInputError("--payload must be 16 hex digits", code="watermark.payload_invalid") from exc
    marked = Watermarker().embed(_image(args.input), payload)
    out = Path(args.output)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(out.suffix.lower())
    if fmt is None:
        raise BadInputError("OUT must end in .png, .jpg, .jpeg or .webp", code="input.output_format")
    buf = io.BytesIO()
    marked.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    try:
        out.write_bytes(buf.getvalue())
    except OSError as exc:
        raise BadInputError(f"cannot write {out}: {exc.strerror}", code="input.file_unwritable") from exc
    print(json.dumps({"output": str(out), "payload": payload.hex()}))
    return 0


def cmd_watermark_decode(args: argparse.Namespace) -> int:
    from consentry.provenance.watermark import Watermarker

    reading = Watermarker().decode(_image(args.input))
    result = {
        "found": reading.found,
        "payload": reading.payload.hex() if reading.payload else None,
        "confidence": round(float(reading.confidence), 4),
    }
    if args.json:
        print(json.dumps(result))
    elif reading.found:
        print(f"watermark found: payload {result['payload']} (confidence {result['confidence']:.2f})")
    else:
        print("no Consentry watermark found")
    return 0
