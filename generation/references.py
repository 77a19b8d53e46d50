"""Preparing verified reference photos for a model: image-to-image starts from one at the job's
exact size, so it is centre-cropped to the output's aspect ratio and resized (never stretched:
a stretched face is a different face to the output check)."""

from __future__ import annotations

from PIL import Image, ImageOps


def fit_reference(photo: Image.Image, width: int, height: int) -> Image.Image:
    """``photo`` as RGB, centre-cropped to ``width``:``height`` and resized to exactly that."""
    return ImageOps.fit(photo.convert("RGB"), (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
