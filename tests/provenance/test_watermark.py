"""The watermark must come back from real photos after JPEG, resizing, crops and brightness
changes, and never from unmarked images. (The big numbers: bench/watermark_robustness.py.)"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from consentry.policies.codes import WATERMARK_FAILED
from consentry.policies.errors import BadInputError
from consentry.provenance.watermark import (
    Watermarker,
    WatermarkNotDecodableError,
    false_positive_bound,
    simulate_redistribution,
)
from consentry.provenance.watermark_keys import WatermarkKeyring

Attack = Callable[[Image.Image], Image.Image]
KEY = b"tests.provenance.watermark-key"  # a deployment's key; there is no default


def _photos(faces_dir: Path) -> list[Path]:
    with (faces_dir / "manifest.csv").open() as f:
        paths = [faces_dir / row["path"] for row in csv.DictReader(f)]
    return [p for p in paths if p.parts[-3:-2] == ("lfw",) or p.parent.name == "groups"]


def _square(path: Path, size: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    return im.crop((0, 0, s, s)).resize((size, size), Image.Resampling.BICUBIC)


def _textured(rng: np.random.Generator, size: int) -> Image.Image:
    """Colour noise blurred to mid frequencies: busy like the tiny diffusion model's output."""
    small = Image.fromarray(np.uint8(rng.integers(0, 256, (size // 3, size // 3, 3))))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _resize_back(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.resize((w // 2, h // 2), Image.Resampling.BICUBIC).resize((w, h), Image.Resampling.BICUBIC)


def _crop(left: float, top: float, right: float, bottom: float) -> Attack:
    # No resize back: the pixel scale stays, the tile grid moves.
    return lambda im: im.crop(
        (round(left * im.width), round(top * im.height), round(right * im.width), round(bottom * im.height))
    )


ATTACKS: dict[str, Attack] = {
    "none": lambda im: im,
    "jpeg50": lambda im: _jpeg(im, 50),
    "resize-half-and-back": _resize_back,
    "crop90-center": _crop(0.05, 0.05, 0.95, 0.95),
    "crop90-corner": _crop(0.1, 0.1, 1.0, 1.0),
    "crop10-one-side": _crop(0.1, 0.0, 1.0, 1.0),
    "brightness-20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "brightness+20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "resize-then-jpeg75": lambda im: _jpeg(_resize_back(im), 75),
    "gate-redistribution": simulate_redistribution,
}


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker.with_key(KEY)


@pytest.fixture(scope="module")
def marked(wm: Watermarker, faces_dir: Path) -> list[tuple[str, Image.Image, Image.Image, bytes]]:
    """(name, original, marked, payload): photos at 256, 512 and 1024, and a busy 512 image."""
    photos, rng = _photos(faces_dir), np.random.default_rng(5)
    images = [(p.name, _square(p, 512)) for p in photos[7::40]]
    images += [
        (photos[-2].name + "@1024", _square(photos[-2], 1024)),
        (photos[11].name + "@256", _square(photos[11], 256)),
    ]
    images += [("textured", _textured(rng, 512))]
    out = []
    for name, im in images:
        payload = rng.bytes(8)
        out.append((name, im, wm.embed_verified(im, payload), payload))
    return out


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_mark_survives(wm: Watermarker, marked: list, attack: str) -> None:
    for name, _, image, payload in marked:
        reading = wm.decode(ATTACKS[attack](image))
        assert reading.found and reading.payload == payload, (name, attack)
        assert 0.8 <= reading.confidence <= 1.0 and reading.method == "tiled-ss"


def test_marks_are_invisible_and_keep_the_size(marked: list) -> None:
    for name, original, image, _ in marked:
        assert image.size == original.size and image.mode == "RGB"
        assert _psnr(original, image) > 38.0, name  # 2.5 or 3.0 grey levels RMS: 40 or 38.6 dB


@pytest.mark.parametrize(
    ("factor", "name"), [(0.5, "tiled-ss@0.5x"), (0.75, "tiled-ss@0.75x"), (1.5, "tiled-ss@1.5x")]
)
def test_resized_copy_is_found_at_the_guessed_scale(
    wm: Watermarker, marked: list, factor: float, name: str
) -> None:
    """A copy kept at another size: the scale comes from the autocorrelation of the tiling."""
    for photo, _, image, payload in marked[:3]:
        size = (round(image.width * factor), round(image.height * factor))
        reading = wm.decode(_jpeg(image.resize(size, Image.Resampling.BICUBIC), 85))
        assert reading.found and reading.payload == payload and reading.method == name, photo


def test_unmarked_images_are_not_found(wm: Watermarker, faces_dir: Path) -> None:
    rng = np.random.default_rng(3)
    photos = [Image.open(p).convert("RGB") for p in _photos(faces_dir)[::3]]
    images = [p.crop((0, 0, 200, 200)) for p in photos] + [_square(q, 512) for q in _photos(faces_dir)[::20]]
    images += [_textured(rng, int(rng.integers(200, 520))) for _ in range(12)]
    images += [Image.fromarray(np.uint8(rng.integers(0, 256, (300, 260, 3)))) for _ in range(4)]
    images += [Image.new("RGB", (256, 256), c) for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128)]]
    assert len(images) >= 60
    assert [i for i, image in enumerate(images) if wm.decode(image).found] == []
    reading = wm.decode(images[0])
    assert reading.payload is None and reading.confidence == 0.0 and reading.method is None
    assert wm.decode(images[0]) == reading  # deterministic


def test_false_positive_bound_is_the_crc_union_bound() -> None:
    assert false_positive_bound(2) == pytest.approx(144 * 2.0**-32)
    assert false_positive_bound() < 1e-6
    # Every key a deployment decodes with is one more chance for noise to pass the CRC.
    assert false_positive_bound(n_keys=3) == pytest.approx(3 * false_positive_bound())
    three = Watermarker(WatermarkKeyring.from_secrets(KEY, b"older key number 1", b"older key number 2"))
    assert three.false_positive_bound() == pytest.approx(3 * Watermarker.with_key(KEY).false_positive_bound())


def test_another_key_does_not_read_our_mark(wm: Watermarker, marked: list) -> None:
    _, _, image, payload = marked[0]
    assert wm.decode(image).payload == payload
    assert wm.decode(image).key_id == wm.current_key_id
    assert not Watermarker.with_key(b"another deployment").decode(image).found


@pytest.mark.parametrize("payload", [b"", b"1234567", b"123456789", "12345678", bytes(16)])
def test_payload_must_be_eight_bytes(wm: Watermarker, payload: object) -> None:
    image = Image.new("RGB", (256, 256), (90, 120, 150))
    with pytest.raises(BadInputError) as info:
        wm.embed(image, payload)  # type: ignore[arg-type]  # a wrong payload is the test
    assert info.value.code == "watermark.payload_invalid"


@pytest.mark.parametrize("size", [(255, 512), (512, 200), (128, 128)])
def test_small_images_are_refused_for_embedding(wm: Watermarker, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (90, 120, 150))
    with pytest.raises(BadInputError) as info:
        wm.embed(image, bytes(8))
    assert info.value.code == "watermark.image_too_small"
    assert not wm.decode(image).found
    assert not wm.decode(Image.new("RGB", (40, 40))).found  # too small to hold a tile: not an error


def test_alpha_is_kept(wm: Watermarker, faces_dir: Path) -> None:
    image = _square(_photos(faces_dir)[0], 256).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((256, 256)))
    marked = wm.embed(image, bytes(range(8)))
    assert marked.mode == "RGBA"
    assert np.array_equal(np.asarray(marked.getchannel("A")), np.asarray(image.getchannel("A")))
    assert wm.decode(marked).payload == bytes(range(8))


def test_a_mark_too_weak_to_survive_is_refused(faces_dir: Path) -> None:
    faint = Watermarker.with_key(KEY, strengths=(0.05,))  # a twentieth of a grey level: rounding erases it
    image = _square(_photos(faces_dir)[3], 256)
    with pytest.raises(WatermarkNotDecodableError) as info:
        faint.embed_verified(image, bytes.fromhex("00112233deadbeef"), attempts=3)
    assert info.value.code == WATERMARK_FAILED


def test_embed_verified_climbs_to_a_stronger_rung(faces_dir: Path) -> None:
    ladder = Watermarker.with_key(KEY, strengths=(0.05, 2.5))
    image = _square(_photos(faces_dir)[3], 256)
    payload = bytes.fromhex("00112233deadbeef")
    with pytest.raises(WatermarkNotDecodableError):
        ladder.embed_verified(image, payload, attempts=1)  # only the faint rung allowed
    marked = ladder.embed_verified(image, payload, attempts=2)
    assert np.array_equal(np.asarray(marked), np.asarray(ladder.embed(image, payload, strength=1)))
    reading = ladder.decode(simulate_redistribution(marked))
    assert reading.found and reading.payload == payload


def test_simulate_redistribution_keeps_size_and_changes_pixels(faces_dir: Path) -> None:
    image = _square(_photos(faces_dir)[0], 300).resize((300, 280))
    shared = simulate_redistribution(image)
    assert shared.size == image.size and shared.mode == "RGB"
    assert 20.0 < _psnr(image, shared) < 45.0
