"""decode_image / sniff_mime on real files, broken files, and images built here."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from consentry.detectors.images import decode_image, sniff_mime
from consentry.policies.errors import ConfigurationError, ImageTooLargeError, InvalidImageError

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}


def decode(data: bytes) -> Image.Image:
    return decode_image(data, **LIMITS)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of all-black rows: tiny on disk, width*height pixels decoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- the shared test photos ------------------------------------------------------------------


def format_files(faces_dir: Path) -> list[Path]:
    return sorted((faces_dir / "formats").iterdir())


def test_every_format_file_decodes_to_the_same_rgb_portrait(faces_dir: Path) -> None:
    files = format_files(faces_dir)
    assert {p.suffix for p in files} >= {".bmp", ".gif", ".ico", ".jpeg", ".png", ".tiff", ".webp"}
    reference = np.asarray(decode((faces_dir / "formats" / "einstein.png").read_bytes()), float)
    for path in files:
        im = decode(path.read_bytes())
        assert im.mode == "RGB" and im.size == (256, 256), path.name
        # Every format shows the same picture (JPEG/WebP/GIF are lossy, hence the slack; a
        # wrong palette, channel order or frame would be far off).
        assert np.abs(np.asarray(im, float) - reference).mean() < 3.0, path.name


@pytest.mark.parametrize(
    ("name", "mime"),
    [("einstein.jpeg", "image/jpeg"), ("einstein.png", "image/png"), ("einstein.gif", "image/gif"),
     ("einstein.webp", "image/webp"), ("einstein.tiff", "image/tiff"), ("einstein.bmp", "image/bmp"),
     ("einstein.ico", "image/x-icon")],
)  # fmt: skip
def test_sniff_mime(faces_dir: Path, name: str, mime: str) -> None:
    assert sniff_mime((faces_dir / "formats" / name).read_bytes()) == mime


@pytest.mark.parametrize("name", ["corrupted.png", "empty.png", "truncated.jpg"])
def test_invalid_files_are_refused(faces_dir: Path, name: str) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode((faces_dir / "invalid" / name).read_bytes())
    assert info.value.code == "image.invalid"


def test_truncated_jpeg_is_not_half_decoded(faces_dir: Path) -> None:
    data = (faces_dir / "invalid" / "truncated.jpg").read_bytes()
    assert sniff_mime(data) == "image/jpeg"  # the header is fine; the pixels run out
    with pytest.raises(InvalidImageError, match="truncated"):
        decode(data)


# -- refusals ---------------------------------------------------------------------------------


def test_empty_upload() -> None:
    for call in (decode, sniff_mime):
        with pytest.raises(InvalidImageError) as info:
            call(b"")
        assert info.value.code == "image.empty"


def test_text_upload_is_not_an_image() -> None:
    text = b"name,age\nalice,31\n" * 20
    for call in (decode, sniff_mime):
        with pytest.raises(InvalidImageError) as info:
            call(text)
        assert info.value.code == "image.invalid"


def test_too_many_bytes() -> None:
    data = encode(Image.new("RGB", (64, 64), "red"), "PNG")
    assert decode_image(data, max_bytes=len(data), max_pixels=10**6).size == (64, 64)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, max_bytes=len(data) - 1, max_pixels=10**6)
    assert info.value.code == "image.too_large"


def test_pixel_limit_is_exact() -> None:
    data = encode(Image.new("RGB", (100, 100), "red"), "PNG")
    assert decode_image(data, max_bytes=10**6, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_bytes=10**6, max_pixels=9_999)


@pytest.mark.parametrize("side", [20_000, 7_000])
def test_decompression_bomb_is_refused_fast(side: int) -> None:
    # 20000^2 also trips Pillow's own guard; 7000^2 = 49 Mpx is below Pillow's default
    # MAX_IMAGE_PIXELS (89 Mpx), so only our header check can refuse it.
    data = png_bomb(side, side)
    assert len(data) < 64 * 1024
    if side == 7_000:
        assert Image.MAX_IMAGE_PIXELS is None or side * side < Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode(data)
    assert time.perf_counter() - start < 1.0
    assert info.value.code == "image.too_large"


def test_truncated_png_built_here_is_refused() -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(InvalidImageError):
        decode(data[: len(data) // 2])


def test_formats_outside_the_allow_list_are_refused() -> None:
    eps = encode(Image.new("RGB", (16, 16), "red"), "EPS")  # decoding EPS would run Ghostscript
    assert sniff_mime(eps) == "application/postscript"
    with pytest.raises(InvalidImageError):
        decode(eps)


def test_load_truncated_images_switched_on_elsewhere_fails_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(Image.new("RGB", (8, 8), "red"), "PNG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # Pillow's global, not ours
    with pytest.raises(ConfigurationError):
        decode(data)


# -- normalisation ----------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 = "rotate 90° clockwise
    # to display", so the viewer sees a portrait with red on top.
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    im = decode(encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif))
    assert im.size == (30, 60)
    out = np.asarray(im).astype(int)
    assert out[5, 15, 0] > 200 and out[5, 15, 2] < 60  # top: red
    assert out[55, 15, 2] > 200 and out[55, 15, 0] < 60  # bottom: blue


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)  # black, fully transparent...
    rgba[:, 5:] = (0, 0, 0, 255)  # ...except the right half, opaque black
    rgba[0, 0] = (0, 0, 0, 128)  # one half-transparent black pixel
    for fmt in ("PNG", "TIFF", "WEBP"):
        out = np.asarray(decode(encode(Image.fromarray(rgba), fmt, lossless=True)))
        assert (out[:, 1:5] == 255).all(), fmt
        assert (out[:, 5:] == 0).all(), fmt
        assert 120 <= out[0, 0, 0] <= 135, fmt


def test_palette_and_gray_transparency() -> None:
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    pal.info["transparency"] = 1  # index 1 (black) is transparent
    assert (np.asarray(decode(encode(pal, "GIF", transparency=1))) == 255).all()
    la = Image.fromarray(np.zeros((8, 8, 2), np.uint8), "LA")  # black, alpha 0
    assert (np.asarray(decode(encode(la, "PNG"))) == 255).all()


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 30_000, np.uint16)
    arr[0, 0] = 65_535
    out = np.asarray(decode(encode(Image.fromarray(arr), "PNG")))
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] == 30_000 >> 8  # 117, where Pillow's own convert would give 255
    assert out[0, 0, 0] == 255


def test_cmyk_jpeg_becomes_rgb() -> None:
    im = decode(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))  # pure red
    r, g, b = np.asarray(im)[8, 8].astype(int)
    assert im.mode == "RGB" and r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "PNG"])
def test_multi_frame_files_are_refused(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 3  # the file really has three frames
    with pytest.raises(InvalidImageError) as exc:
        decode(data)
    assert exc.value.code == "image.multi_frame"
    single = encode(frames[0], fmt, lossless=True)
    r, g, b = np.asarray(decode(single))[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60
