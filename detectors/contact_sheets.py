"""Contact sheets: one picture per face group, so the operator can see who each group is.

Each sheet is a grid of square face crops (most typical face first) under a header naming the
group (``#N  faces, photos``); it is written as ``group_NNN.png``. The photos are read again
with the same decoding limits as the scan; one that can no longer be read (changed or removed
since the scan) leaves its cell empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from consentry.detectors.images import decode_image
from consentry.detectors.library import FaceGroup
from consentry.policies.errors import ConsentryError


def _crop(image: Image.Image, box: tuple[float, float, float, float], side: int) -> Image.Image:
    """A square crop around the face with some margin (hair, chin), resized to ``side``."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * 0.65
    region = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    # Image.crop pads outside the image with black, which keeps faces at the edge centred.
    return image.crop(region).resize((side, side), Image.Resampling.LANCZOS)


def write_contact_sheet(
    group: FaceGroup,
    out_dir: Path,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    thumb: int = 112,
    columns: int = 6,
    limit: int = 36,
) -> Path:
    """Draw up to ``limit`` face crops of ``group`` in a grid under a header naming the group;
    the photos are decoded again under ``max_image_bytes`` and ``max_image_pixels``."""
    shown = group.faces[:limit]
    rows = max(1, -(-len(shown) // columns))
    header = 36
    sheet = Image.new("RGB", (columns * thumb, header + rows * thumb), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=22)
    more = f" (first {len(shown)} shown)" if len(shown) < group.size else ""
    faces = "face" if group.size == 1 else "faces"
    photos = "photo" if group.photos == 1 else "photos"
    title = f"#{group.number}  {group.size} {faces}, {group.photos} {photos}{more}"
    draw.text((8, 6), title, fill="white", font=font)
    cache: dict[Path, Image.Image | None] = {}
    for k, face in enumerate(shown):
        if face.path not in cache:
            try:
                cache[face.path] = decode_image(
                    face.path.read_bytes(), max_bytes=max_image_bytes, max_pixels=max_image_pixels
                )
            except (OSError, ConsentryError):
                cache[face.path] = None  # changed since the scan: leave its cell empty
        image = cache[face.path]
        if image is not None:
            sheet.paste(
                _crop(image, face.box, thumb), ((k % columns) * thumb, header + (k // columns) * thumb)
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"group_{group.number:03d}.png"
    sheet.save(path)
    return path


def write_contact_sheets(
    groups: Sequence[FaceGroup], out_dir: Path, *, max_image_bytes: int, max_image_pixels: int
) -> list[FaceGroup]:
    """One contact sheet per group in ``out_dir``; returns the groups with ``sheet`` set."""
    return [
        replace(
            g,
            sheet=write_contact_sheet(
                g, out_dir, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels
            ),
        )
        for g in groups
    ]
