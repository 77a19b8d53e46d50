"""The C2PA manifest store embedded in a released PNG, as bytes (``application/c2pa``).

C2PA embeds the store in a PNG as the data of one ``caBX`` chunk (a JUMBF superbox); the store
on its own is what a Soft Binding Resolution service hands out for an asset whose metadata was
stripped. The c2pa SDK reads such stores (``application/c2pa``) but has no call that returns
the embedded bytes, so the chunk is read here; it is copied out unchanged, signature and all.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
C2PA_CHUNK = b"caBX"
_HEADER = struct.Struct(">I4s")


def png_manifest_store(data: bytes) -> bytes | None:
    """The manifest store of a PNG, or None when the file is no intact PNG or carries none.

    Every chunk up to the store is walked and its CRC checked, so a truncated or damaged file
    never hands out part of a store.
    """
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos = len(PNG_SIGNATURE)
    while pos + _HEADER.size <= len(data):
        length, kind = _HEADER.unpack_from(data, pos)
        body_start, body_end = pos + _HEADER.size, pos + _HEADER.size + length
        if body_end + 4 > len(data):
            return None
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            return None
        if kind == C2PA_CHUNK:
            return data[body_start:body_end] or None
        if kind == b"IEND":
            return None
        pos = body_end + 4
    return None
