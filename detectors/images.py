"""Turn uploaded bytes into one RGB image, or refuse them, before anything else touches them.

Uploads are hostile until decoded: this is the one place that enforces the byte and pixel limits
(the pixel count is read from the header, so a decompression bomb is refused before a single
pixel is inflated), refuses truncated or corrupt files instead of half-decoding them, and
normalises orientation, colour mode and transparency so that detection sees what a person
viewing the photo sees.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from consentry.policies import codes
from consentry.policies.errors import (
    ConfigurationError,
    ConsentryError,
    ImageTooLargeError,
    InvalidImageError,
)

# Raster formats we decode. Pillow knows more, but some of them hand the file to an external
# program (EPS runs Ghostscript) or are not photos (PDF, MPEG, fonts); an upload in any other
# format is refused as ``image.invalid``. JPEG includes MPO, the multi-picture JPEG many cameras
# write (Pillow's JPEG opener returns it). Formats this Pillow build lacks (AVIF) drop out.
_WANTED = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "ICO", "AVIF")
Image.init()
DECODABLE_FORMATS = tuple(f for f in _WANTED if f in Image.OPEN)

_WHITE = (255, 255, 255, 255)


def sniff_mime(data: bytes) -> str:
    """The MIME type of an image in any format Pillow can identify, from its header alone.

    Formats Pillow identifies but has no MIME type for are reported as
    ``application/octet-stream``. Raises InvalidImageError (``image.empty`` /
    ``image.invalid``) when the bytes are not an image Pillow knows, and ImageTooLargeError for
    headers that Pillow itself refuses as decompression bombs.
    """
    if not data:
        raise InvalidImageError("the upload is empty", code=codes.IMAGE_EMPTY)
    with _open(data, formats=None) as im:
        return Image.MIME.get(im.format or "", "application/octet-stream")


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an upload to a fully loaded RGB image, or raise.

    - ``image.empty``: zero bytes; ``image.too_large``: more than ``max_bytes`` bytes, or more
      than ``max_pixels`` pixels according to the header (checked before decoding);
      ``image.invalid``: anything that is not a complete image in DECODABLE_FORMATS.
    - EXIF orientation is applied, so the result is upright.
    - Multi-frame files (animated GIF/WebP/PNG, multi-page TIFF) are refused with
      ``image.multi_frame``: a face check of one frame says nothing about the others. Camera MPO
      files (a JPEG plus previews) give their primary image; ICO its largest icon.
    - Palette, grayscale, 16-bit and CMYK images are converted to 8-bit RGB; transparency is
      composited over white (a transparent background is not a dark one).

    Truncated files are refused: Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay
    False (it is checked on every call; if some other code set it, decoding fails closed with a
    ConfigurationError rather than accepting half-decoded images). Pillow's own decompression
    bomb guard (``Image.MAX_IMAGE_PIXELS``, refused at twice its value) stays in place as an
    outer bound: a ``max_pixels`` above that cannot take effect.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigurationError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode uploads because "
            "truncated images would be accepted half-decoded"
        )
    if not data:
        raise InvalidImageError("the upload is empty", code=codes.IMAGE_EMPTY)
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"the upload has {len(data)} bytes; the limit is {max_bytes}")
    with _open(data, formats=DECODABLE_FORMATS) as im:
        _check_pixels(im.size, max_pixels)
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and im.format != "MPO":
            raise InvalidImageError(
                f"the {im.format} image has {frames} frames; upload a single still image",
                code=codes.IMAGE_MULTI_FRAME,
            )
        try:
            im.load()  # frame 0 only; raises on truncated or corrupt data
            # Some containers (ICO holding a PNG) only learn the true size on load.
            _check_pixels(im.size, max_pixels)
            upright = ImageOps.exif_transpose(im)
            return _to_rgb(upright)
        except ConsentryError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
        except Exception as exc:  # Pillow raises many types for broken files
            raise InvalidImageError(f"the image cannot be decoded: {exc}") from exc


def _open(data: bytes, *, formats: tuple[str, ...] | None) -> Image.Image:
    """Identify the image and read its header only (Image.open is lazy)."""
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        known = ", ".join(formats) if formats else "any format Pillow knows"
        raise InvalidImageError(f"the upload is not a readable image ({known})") from exc
    except Exception as exc:
        raise InvalidImageError(f"the image header cannot be read: {exc}") from exc


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB, transparency composited over white."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _to_8bit_gray(im)
    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    # convert() always returns a new image, detached from the upload's buffer.
    return im.convert("RGB")


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) grayscale to 8-bit.

    Pillow's own conversion clips these to 255, which turns most 16-bit photos white. ``I;16``
    is scaled from 0..65535; ``I`` holds 16-bit samples in Pillow's PNG/TIFF decoders unless
    every value fits in 8 bits; ``F`` is clipped to 0..255 as Pillow does.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = arr.astype(np.uint32) >> 8
    elif im.mode == "I":
        clipped = np.clip(arr.astype(np.int64), 0, 65535)
        out = clipped >> 8 if clipped.max(initial=0) > 255 else clipped
    else:
        out = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255)
    return Image.fromarray(out.astype(np.uint8))
