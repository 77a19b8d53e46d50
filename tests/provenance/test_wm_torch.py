"""The batched torch watermark reads and writes exactly what the numpy watermark does.

"Bit-exact" here: the luma plane is identical; candidate soft values agree to 1e-6 (float64
FFTs of two libraries); the Viterbi bits of every candidate row, the CRC decisions and so the
payload, key, method and found / not-found of every reading are identical, also after JPEG
re-encoding; confidences agree to 1e-4. Marked pixels may differ by one grey level (float32
box blurs summed in another order); each backend decodes the other's marks. On the CPU here; the
same checks run on CUDA where there is one (marked ``gpu``). Speed: bench/wm_torch.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consentry.policies.codes import CONFIG_DEVICE, WATERMARK_FAILED
from consentry.policies.errors import ConfigurationError
from consentry.provenance.watermark import (
    Watermarker,
    WatermarkNotDecodableError,
    WatermarkReading,
    simulate_redistribution,
)
from consentry.provenance.watermark_keys import WatermarkKeyring
from consentry.provenance.wm_batch import TorchBatch, resolve_device
from consentry.provenance.wm_codes import CODED_BITS, viterbi_decode
from consentry.provenance.wm_spread import Candidates, TiledSpreadSpectrum, luma, luma_numpy
from consentry.provenance.wm_torch import TorchSpread, viterbi
from consentry.provenance.wm_torch import luma as torch_luma

KEY = b"tests.provenance.wm-torch-key"
OLD_KEY = b"tests.provenance.wm-torch-old-key"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _square(path: Path, size: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    return im.crop((0, 0, s, s)).resize((size, size), Image.Resampling.BICUBIC)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[Image.Image]:
    """Six real photos at 512 (LFW and groups) and two at 384x320 (a second size group)."""
    paths = sorted(faces_dir.glob("lfw/*/*.jpg"))[::23][:4] + sorted(faces_dir.glob("groups/*.jpg"))[:2]
    images = [_square(p, 512) for p in paths]
    return images + [_square(p, 384).resize((384, 320)) for p in paths[:2]]


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker(WatermarkKeyring.from_secrets(KEY, OLD_KEY))


@pytest.fixture(scope="module")
def payloads(photos: list[Image.Image]) -> list[bytes]:
    rng = np.random.default_rng(12)
    return [rng.bytes(8) for _ in photos]


def _same_reading(a: WatermarkReading, b: WatermarkReading) -> None:
    assert (a.found, a.payload, a.method, a.key_id) == (b.found, b.payload, b.method, b.key_id)
    assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def _parity(wm: Watermarker, device: str, photos: list[Image.Image], payloads: list[bytes]) -> None:
    batch = TorchBatch(wm, device)
    by_torch = batch.embed(photos, payloads)
    by_numpy = [wm.embed(im, p) for im, p in zip(photos, payloads, strict=True)]
    for a, b in zip(by_torch, by_numpy, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= 1e-4 * diff.size
    # Each decodes the other's marks, with the same payload and the same reading.
    for numpy_reading, torch_reading, p in zip(
        [wm.decode(im) for im in by_torch], batch.decode(by_numpy), payloads, strict=True
    ):
        assert numpy_reading.payload == p and torch_reading.payload == p
        _same_reading(numpy_reading, torch_reading)
    # After JPEG re-encoding: every decision and every candidate row's Viterbi bits agree.
    spread, method = batch.spreads[0], wm._readers[0].method
    assert isinstance(method, TiledSpreadSpectrum)
    for quality in (75, 50):
        copies = [_jpeg(im, quality) for im in by_torch]
        for ours, reference in zip(batch.decode(copies), [wm.decode(im) for im in copies], strict=True):
            _same_reading(ours, reference)
            assert ours.found
        rgb = np.stack([np.asarray(im) for im in copies[:6]])
        soft, shifts, _ = spread.candidates(torch.from_numpy(rgb).to(device))
        for k in range(len(rgb)):
            first = next(method.candidates(rgb[k]))
            assert np.array_equal(shifts[k].cpu().numpy(), first.shifts)
            np.testing.assert_allclose(soft[k].cpu().numpy(), first.soft, atol=1e-6)
            bits = viterbi(soft[k]).cpu().numpy()
            assert np.array_equal(bits, viterbi_decode(first.soft))


def test_luma_is_opencvs_to_the_bit(photos: list[Image.Image]) -> None:
    """torch, numpy and OpenCV compute the same luma (the decoder uses whichever is at hand)."""
    import cv2

    noise = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    for rgb in [np.asarray(image) for image in photos] + [noise]:
        reference = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        assert np.array_equal(luma(rgb), reference)
        assert np.array_equal(luma_numpy(rgb), reference)
        assert np.array_equal(torch_luma(torch.tensor(rgb)[None])[0].numpy(), reference)


def test_mask_is_the_numpy_mask(photos: list[Image.Image]) -> None:
    for image in photos[:3]:
        y = luma(np.asarray(image))
        reference = TiledSpreadSpectrum._mask(y)
        ours = TorchSpread.mask(torch.from_numpy(y)[None])[0].numpy()
        np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.slow
def test_torch_and_numpy_agree_on_the_cpu(
    wm: Watermarker, photos: list[Image.Image], payloads: list[bytes]
) -> None:
    _parity(wm, "cpu", photos, payloads)


@pytest.mark.gpu
@CUDA
def test_torch_and_numpy_agree_on_cuda(
    wm: Watermarker, photos: list[Image.Image], payloads: list[bytes]
) -> None:
    _parity(wm, "cuda", photos, payloads)


def test_viterbi_matches_numpy_row_for_row() -> None:
    rng = np.random.default_rng(4)
    codewords = rng.integers(0, 2, (40, CODED_BITS))
    soft = (2.0 * codewords - 1.0) + rng.normal(0.0, 1.2, codewords.shape)  # many rows fail the CRC
    assert np.array_equal(viterbi(torch.from_numpy(soft)).numpy(), viterbi_decode(soft))


def test_unmarked_resized_and_old_key_images_read_the_same(
    wm: Watermarker, photos: list[Image.Image], payloads: list[bytes]
) -> None:
    batch = TorchBatch(wm, "cpu")
    old = Watermarker.with_key(OLD_KEY)
    by_old_key = old.embed(photos[0], payloads[0])
    kept_smaller = wm.embed(photos[1], payloads[1]).resize((384, 384), Image.Resampling.BICUBIC)
    stranger = Watermarker.with_key(b"another deployment's key").embed(photos[2], payloads[2])
    images = [*photos[:4], by_old_key, kept_smaller, stranger, Image.new("RGB", (300, 300), (9, 9, 9))]
    images.append(Image.new("RGB", (64, 64)))  # too small to decode: not found, not an error
    readings = batch.decode(images)
    for ours, reference in zip(readings, [wm.decode(im) for im in images], strict=True):
        _same_reading(ours, reference)
    assert [r.found for r in readings] == [False] * 4 + [True, True, False, False, False]
    assert readings[4].key_id == old.current_key_id and readings[4].payload == payloads[0]
    assert readings[5].method == "tiled-ss@0.75x" and readings[5].payload == payloads[1]


def test_embed_verified_many_marks_all_or_refuses(wm: Watermarker, photos: list[Image.Image]) -> None:
    batch = TorchBatch(wm, "cpu")
    payload = bytes.fromhex("0011223344556677")
    images = [photos[0], photos[6].convert("RGBA"), photos[3]]
    marked = batch.embed_verified(images, payload)
    assert [m.size for m in marked] == [im.size for im in images]
    assert marked[1].mode == "RGBA"
    for m in marked:
        assert wm.decode(simulate_redistribution(m)).payload == payload
    faint = TorchBatch(Watermarker.with_key(KEY, strengths=(0.05,)), "cpu")
    with pytest.raises(WatermarkNotDecodableError) as info:
        faint.embed_verified(images[:2], payload)
    assert info.value.code == WATERMARK_FAILED


def test_a_flat_image_carries_the_mark(wm: Watermarker) -> None:
    """A plain colour has no spectral power at all; its weights once became 0/0."""
    flat = Image.new("RGB", (256, 256), (120, 140, 160))
    with np.errstate(all="raise"):
        marked = wm.embed(flat, bytes(range(8)))
    assert wm.decode(simulate_redistribution(marked)).payload == bytes(range(8))
    assert TorchBatch(wm, "cpu").decode([marked])[0].payload == bytes(range(8))


def test_device_choice() -> None:
    assert resolve_device("cpu") is None
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else None)
    with pytest.raises(ConfigurationError) as info:
        resolve_device("warp-drive")
    assert info.value.code == CONFIG_DEVICE
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError):
            resolve_device("cuda")
    numpy_only = Watermarker.with_key(KEY)
    assert numpy_only.device == "cpu" and numpy_only._batch() is None


class _CountingSpread(TiledSpreadSpectrum):
    """The real method, counting the candidate batches the decoder pulls (one per scale)."""

    pulled: list[int]

    def __init__(self, key: bytes, n_coded: int) -> None:
        super().__init__(key, n_coded)
        self.pulled = []

    def candidates(self, rgb: np.ndarray) -> Iterator[Candidates]:
        self.pulled.append(0)
        for batch in super().candidates(rgb):
            self.pulled[-1] += 1
            yield batch


def test_an_older_keys_mark_costs_no_scale_search(photos: list[Image.Image], payloads: list[bytes]) -> None:
    """Every key's original scale is tried before any key's scale search (~80 ms a key)."""
    ring = WatermarkKeyring.from_secrets(b"newest key of three", b"middle key of three", OLD_KEY)
    wm = Watermarker(ring, method=_CountingSpread)
    marked = Watermarker.with_key(OLD_KEY).embed(photos[0], payloads[0])
    reading = wm.decode(marked)
    assert reading.payload == payloads[0] and reading.key_id == ring.keys[2].id
    assert [r.method.pulled for r in wm._readers] == [[1], [1], [1]]  # type: ignore[attr-defined]
    unmarked = wm.decode(photos[1])
    assert not unmarked.found
    assert all(r.method.pulled[-1] > 1 for r in wm._readers)  # type: ignore[attr-defined]
