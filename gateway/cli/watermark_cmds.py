"""Operator tools for trust-and-safety checks: embed or decode a watermark without the gate.

Both use the deployment's watermark keyring (``keys_dir/watermark``): embedding with the current
key, decoding with every key, so what these tools read is what the gateway's verification reads.
There is no fallback key: embedding on a fresh deployment creates its first key (as the gateway
does on first run); decoding without a keyring fails with ``keys.watermark_missing``.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from consentry.gateway.cli.common import load_settings, read_file
from consentry.policies import codes
from consentry.policies.errors import BadInputError

if TYPE_CHECKING:
    from PIL import Image

    from consentry.provenance.watermark import Watermarker
    from consentry.provenance.watermark_keys import WatermarkKeyring

# Order of work in both commands: the keyring (a missing or corrupt one is reported first), then
# the image (an unreadable one is reported before the watermark code and OpenCV are imported),
# then the watermarker.


def _image(path: str) -> Image.Image:
    from consentry.detectors.images import decode_image

    s = load_settings()
    return decode_image(read_file(path), max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels)


def _keyring(*, create: bool) -> WatermarkKeyring:
    """The deployment's watermark keys. Embedding on a fresh deployment creates its first key, as
    the gateway does on first run; decoding never invents a key that could not have marked."""
    from consentry.provenance.watermark_keys import WatermarkKeyring

    keys_dir = load_settings().keys_dir
    return WatermarkKeyring.load_or_create(keys_dir) if create else WatermarkKeyring.load(keys_dir)


def _watermarker(ring: WatermarkKeyring) -> Watermarker:
    from consentry.provenance.watermark import Watermarker

    return Watermarker(ring)


def cmd_watermark_embed(args: argparse.Namespace) -> int:
    try:
        payload = bytes.fromhex(args.payload) if args.payload else secrets.token_bytes(8)
    except ValueError as exc:
        raise BadInputError("--payload must be 16 hex digits", code=codes.WATERMARK_PAYLOAD_INVALID) from exc
    out = Path(args.output)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(out.suffix.lower())
    if fmt is None:
        raise BadInputError("OUT must end in .png, .jpg, .jpeg or .webp", code=codes.INPUT_OUTPUT_FORMAT)
    ring = _keyring(create=True)
    image = _image(args.input)
    watermarker = _watermarker(ring)
    marked = watermarker.embed(image, payload)
    buf = io.BytesIO()
    marked.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    try:
        out.write_bytes(buf.getvalue())
    except OSError as exc:
        raise BadInputError(f"cannot write {out}: {exc.strerror}", code=codes.INPUT_FILE_UNWRITABLE) from exc
    print(json.dumps({"output": str(out), "payload": payload.hex(), "key_id": watermarker.current_key_id}))
    return 0


def cmd_watermark_decode(args: argparse.Namespace) -> int:
    ring = _keyring(create=False)
    image = _image(args.input)
    watermarker = _watermarker(ring)
    reading = watermarker.decode(image)
    result = {
        "found": reading.found,
        "payload": reading.payload.hex() if reading.payload else None,
        "confidence": round(float(reading.confidence), 4),
        "key_id": reading.key_id,
    }
    if args.json:
        print(json.dumps(result))
    elif reading.found:
        print(
            f"watermark found: payload {result['payload']} "
            f"(confidence {result['confidence']:.2f}, key {reading.key_id})"
        )
    else:
        print(f"no watermark made with this deployment's keys ({len(watermarker.keyring)} tried)")
    return 0
