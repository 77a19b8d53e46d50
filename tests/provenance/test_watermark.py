"""The watermark must come back from real photos after redistribution, and never from unmarked ones."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from policies.decision import WATERMARK_FAILED
from policies.errors import BadInputError
from provenance.watermark import (
    DwtDctSvd,
    Watermarker,
    WatermarkNotDecodableError,
    simulate_redistribution,
)


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker()


def _photos(faces_dir: Path) -> list[Path]:
    with (faces_dir / "manifest.csv").open() as f:
        paths = [faces_dir / row["path"] for row in csv.DictReader(f)]
    return [p for p in paths if p.parts[-3:-2] == ("lfw",) or p.parent.name == "groups"]


def _smooth(rng: np.random.Generator, size: int) -> Image.Image:
    """A random low-frequency colour field: little texture for the mark to hide in."""
    grid = rng.normal(0.0, 1.0, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
    small = Image.fromarray(np.uint8(np.clip(128 + 60 * grid, 0, 255)))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


@pytest.mark.parametrize("size", [256, 512])
def test_round_trip_on_real_photos_survives_redistribution(
    wm: Watermarker, faces_dir: Path, size: int
) -> None:
    rng = np.random.default_rng(size)
    for path in _photos(faces_dir)[::12]:
        image = Image.open(path).convert("RGB").resize((size, size))
        payload = rng.bytes(8)
        marked = wm.embed_verified(image, payload, attempts=3)
        assert marked.size == image.size
        assert _psnr(image, marked) > 33.0, path.name  # invisible: chroma-only, small steps
        direct = wm.decode(marked)
        assert direct.found and direct.payload == payload, path.name
        shared = wm.decode(simulate_redistribution(marked))
        assert shared.found and shared.payload == payload, path.name
        assert 0.65 <= shared.confidence <= 1.0


def test_weakest_rung_alone_survives_on_most_photos(wm: Watermarker, faces_dir: Path) -> None:
    """The ladder is a fallback, not the norm: the least visible strength must usually do."""
    rng = np.random.default_rng(7)
    photos = _photos(faces_dir)[1::10]
    ok = 0
    for path in photos:
        image = Image.open(path).convert("RGB").resize((384, 320))  # not square, not a multiple of 8
        payload = rng.bytes(8)
        reading = wm.decode(simulate_redistribution(wm.embed(image, payload, strength=0)))
        ok += reading.found and reading.payload == payload
    assert ok >= len(photos) - 1


def test_round_trip_on_smooth_random_images(wm: Watermarker) -> None:
    rng = np.random.default_rng(11)
    for i in range(8):
        image = _smooth(rng, (256, 512)[i % 2])
        payload = rng.bytes(8)
        reading = wm.decode(simulate_redistribution(wm.embed_verified(image, payload)))
        assert reading.found and reading.payload == payload


def test_unmarked_images_are_not_found(wm: Watermarker, faces_dir: Path) -> None:
    rng = np.random.default_rng(3)
    images = [Image.open(p).convert("RGB").resize((256, 256)) for p in _photos(faces_dir)[::2]]
    images += [_smooth(rng, 256) for _ in range(8)]
    images += [Image.new("RGB", (256, 256), c) for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128)]]
    images += [Image.new("RGB", (300, 260), c) for c in [(255, 0, 0), (0, 0, 255), (20, 200, 40)]]
    assert len(images) >= 60
    false_finds = [i for i, image in enumerate(images) if wm.decode(image).found]
    assert false_finds == []
    assert wm.decode(images[0]) == wm.decode(images[0])  # deterministic
    reading = wm.decode(images[0])
    assert reading.payload is None and reading.confidence == 0.0 and reading.method is None


def test_another_key_does_not_read_our_mark(wm: Watermarker, faces_dir: Path) -> None:
    image = Image.open(_photos(faces_dir)[5]).convert("RGB").resize((512, 512))
    marked = wm.embed(image, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert wm.decode(marked).found
    assert not Watermarker(key=b"another deployment").decode(marked).found


@pytest.mark.parametrize("payload", [b"", b"1234567", b"123456789", "12345678", bytes(16)])
def test_payload_must_be_eight_bytes(wm: Watermarker, payload: object) -> None:
    image = Image.new("RGB", (256, 256), (90, 120, 150))
    with pytest.raises(BadInputError) as info:
        wm.embed(image, payload)  # type: ignore[arg-type]
    assert info.value.code == "watermark.payload_invalid"


@pytest.mark.parametrize("size", [(255, 512), (512, 200), (128, 128)])
def test_small_images_are_refused_for_embedding_and_read_as_unmarked(
    wm: Watermarker, size: tuple[int, int]
) -> None:
    image = Image.new("RGB", size, (90, 120, 150))
    with pytest.raises(BadInputError) as info:
        wm.embed(image, bytes(8))
    assert info.value.code == "watermark.image_too_small"
    assert not wm.decode(image).found


def test_alpha_is_kept(wm: Watermarker, faces_dir: Path) -> None:
    image = Image.open(_photos(faces_dir)[0]).convert("RGBA").resize((256, 256))
    image.putalpha(Image.linear_gradient("L").resize((256, 256)))
    marked = wm.embed(image, bytes(range(8)))
    assert marked.mode == "RGBA"
    assert np.array_equal(np.asarray(marked.getchannel("A")), np.asarray(image.getchannel("A")))
    assert wm.decode(marked).payload == bytes(range(8))


class LeastSignificantBit:
    """A deliberately fragile method (blue-channel LSBs): exact on lossless copies, gone after JPEG."""

    name = "lsb"

    def embed(self, rgb: NDArray[np.uint8], bits: NDArray[np.uint8]) -> NDArray[np.uint8]:
        out = rgb.copy()
        flat = out[..., 2].reshape(-1)
        flat[: len(bits) * 64] = (flat[: len(bits) * 64] & 0xFE) | np.repeat(bits, 64)
        out[..., 2] = flat.reshape(out.shape[:2])
        return out

    def decode(self, rgb: NDArray[np.uint8], n_bits: int) -> NDArray[np.float64]:
        lsb = (rgb[..., 2].reshape(-1)[: n_bits * 64] & 1).reshape(n_bits, 64)
        return lsb.mean(axis=1).astype(np.float64)


def test_a_mark_that_does_not_survive_is_refused(faces_dir: Path) -> None:
    fragile = Watermarker([LeastSignificantBit()])
    image = Image.open(_photos(faces_dir)[3]).convert("RGB").resize((256, 256))
    payload = bytes.fromhex("00112233deadbeef")
    assert fragile.decode(fragile.embed(image, payload)).payload == payload  # fine when lossless
    with pytest.raises(WatermarkNotDecodableError) as info:
        fragile.embed_verified(image, payload, attempts=3)
    assert info.value.code == WATERMARK_FAILED


def test_embed_verified_climbs_to_a_stronger_method(faces_dir: Path) -> None:
    ladder = Watermarker([LeastSignificantBit(), DwtDctSvd(72)])
    image = Image.open(_photos(faces_dir)[3]).convert("RGB").resize((256, 256))
    payload = bytes.fromhex("00112233deadbeef")
    with pytest.raises(WatermarkNotDecodableError):
        ladder.embed_verified(image, payload, attempts=1)  # only the fragile rung allowed
    marked = ladder.embed_verified(image, payload, attempts=2)
    reading = ladder.decode(simulate_redistribution(marked))
    assert reading.found and reading.payload == payload and reading.method == "dwtDctSvd(scale=72)"


def test_simulate_redistribution_keeps_size_and_changes_pixels(faces_dir: Path) -> None:
    image = Image.open(_photos(faces_dir)[0]).convert("RGB").resize((300, 280))
    shared = simulate_redistribution(image)
    assert shared.size == image.size and shared.mode == "RGB"
    assert 20.0 < _psnr(image, shared) < 45.0
