"""What the provenance steps hand on: frozen outputs, like the generator's ``GenerationOutput``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkedImages:
    """The outputs with the invisible watermark embedded, each proven to decode after simulated
    re-encoding before it was handed on."""

    images: tuple[Image.Image, ...]
    payload: bytes
    """The 8-byte payload every image carries."""
    algorithm: str
    key_id: str
    """Which deployment watermark key made the mark (never the key itself)."""

    def summary(self) -> str:
        return f"payload {self.payload.hex()} decodes after JPEG 75 + resize (key {self.key_id})"


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedImages:
    """PNG files, each carrying a signed C2PA manifest."""

    files: tuple[bytes, ...]
    media_type: str
    manifest: dict[str, Any]
    """What the generation record keeps of the manifest (claim generator, record id)."""

    def summary(self) -> str:
        return f"{len(self.files)} image(s) signed"
