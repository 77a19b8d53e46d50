"""BatchedMTCNN (what FaceDetector runs) against the stock facenet-pytorch MTCNN, configured as
FaceDetector configured it before the swap.

Parity is measured on the raw MTCNN output (before FaceDetector's 0.9 / min-size cut), on every
photo of ../shared/faces (LFW, formats, groups) at both face sizes the gate uses (20 and 40 px):
the same face count on every photo, box IoU >= 0.95 and landmarks within 1.5 px for >= 99% of
faces. The actual minimum IoU and maximum landmark error are printed (run with ``-s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch.models.utils.detect_face import batched_nms_numpy
from PIL import Image
from torchvision.ops import box_iou

from consentry.detectors.detection import DEFAULT_STAGE_THRESHOLDS, FaceDetector
from consentry.detectors.mtcnn_batched import (
    BatchedMTCNN,
    area_resize,
    crop_area_resize,
    nms_min,
    pin_malloc_thresholds,
    pyramid,
    pyramid_scales,
    summed_area,
)
from consentry.detectors.mtcnn_nets import CascadeNet, ONet, PNet, RNet

Raw = tuple[list[np.ndarray | None], list[np.ndarray | None], list[np.ndarray | None]]


def load(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


@dataclass
class Stock:
    """facenet-pytorch's own MTCNN, as FaceDetector used it, batched as FaceDetector batches."""

    min_face_px: int
    max_batch: int
    _mtcnn: Any


def stock_detector(min_face_px: int) -> Stock:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(
        min_face_size=min_face_px,
        thresholds=list(DEFAULT_STAGE_THRESHOLDS),
        keep_all=True,
        select_largest=False,
        post_process=False,
        device="cpu",
    ).eval()
    return Stock(min_face_px, FaceDetector(device="cpu").max_batch, mtcnn)


@pytest.fixture(scope="module")
def stock40() -> Stock:
    return stock_detector(40)


@pytest.fixture(scope="module")
def stock20() -> Stock:
    return stock_detector(20)


def _swapped(stock: Stock) -> FaceDetector:
    """FaceDetector as shipped: BatchedMTCNN inside."""
    det = FaceDetector(device="cpu", min_face_px=stock.min_face_px)
    assert isinstance(det._mtcnn, BatchedMTCNN)
    return det


def _stock_raw(det: Stock, images: list[Image.Image]) -> Raw:
    # As FaceDetector batches: equal sizes together, at most max_batch per call.
    out: Raw = ([], [], [])
    for start in range(0, len(images), det.max_batch):
        chunk = images[start : start + det.max_batch]
        assert len({im.size for im in chunk}) == 1
        b, p, lm = det._mtcnn.detect(chunk, landmarks=True)
        for dst, src in zip(out, (b, p, lm), strict=True):
            dst.extend(src)
    return out


def _compare(stock: Raw, ours: Raw, names: list[str]) -> tuple[list[str], list[float], list[float]]:
    count_mismatch, ious, lm_err = [], [], []
    for name, b1, l1, b2, l2 in zip(names, stock[0], stock[2], ours[0], ours[2], strict=True):
        n1 = 0 if b1 is None else len(b1)
        n2 = 0 if b2 is None else len(b2)
        if n1 != n2:
            count_mismatch.append(f"{name}: {n1} vs {n2}")
        if n1 and n2:
            assert b1 is not None and b2 is not None and l1 is not None and l2 is not None
            iou = box_iou(
                torch.as_tensor(np.asarray(b1, np.float64)), torch.as_tensor(b2, dtype=torch.float64)
            )
            best = iou.max(1)
            for i, (v, j) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True)):
                ious.append(v)
                lm_err.append(float(np.abs(np.asarray(l1[i], np.float64) - l2[j]).max()))
    return count_mismatch, ious, lm_err


def _check(label: str, mismatch: list[str], ious: list[float], lm_err: list[float]) -> None:
    iou_a, lm_a = np.array(ious), np.array(lm_err)
    print(
        f"\n{label}: {len(ious)} faces, count mismatches {mismatch}, min IoU {iou_a.min():.6f}, "
        f"IoU>=0.95 {np.mean(iou_a >= 0.95):.4f}, max landmark err {lm_a.max():.2e} px, "
        f"<=1.5px {np.mean(lm_a <= 1.5):.4f}"
    )
    assert not mismatch
    assert np.mean(iou_a >= 0.95) >= 0.99
    assert np.mean(lm_a <= 1.5) >= 0.99


def _all_photos(faces_dir: Path) -> list[Path]:
    lfw = sorted(faces_dir.glob("lfw/*/*.jpg"))
    fmts = sorted((faces_dir / "formats").iterdir())
    groups = sorted((faces_dir / "groups").glob("*.jpg"))
    assert len(lfw) >= 100 and len(fmts) == 7 and len(groups) == 9
    return lfw + fmts + groups


@pytest.mark.slow  # stock MTCNN on 135 photos: ~5-10 s per face size on 2 cores
@pytest.mark.parametrize("min_face", [40, 20])
def test_parity_on_every_photo(faces_dir: Path, min_face: int, stock40: Stock, stock20: Stock) -> None:
    stock = {40: stock40, 20: stock20}[min_face]
    paths = _all_photos(faces_dir)
    images = [load(p) for p in paths]
    expected: Raw = ([], [], [])
    for im in images:  # stock one photo at a time
        for dst, src in zip(expected, stock._mtcnn.detect([im], landmarks=True), strict=True):
            dst.extend(src)
    # Ours: all of them in ONE call (mixed sizes are grouped inside).
    mine = BatchedMTCNN(min_face_size=min_face, device="cpu").detect(images)
    _check(f"all photos @{min_face}", *_compare(expected, mine, [p.name for p in paths]))


def test_parity_batched_like_face_detector(faces_dir: Path, stock40: Stock) -> None:
    # Stock batched as FaceDetector batched it (equal sizes, max_batch per call) against ours.
    lfw = [load(p) for p in sorted(faces_dir.glob("lfw/*/*.jpg"))]
    _check(
        "lfw batched @40",
        *_compare(_stock_raw(stock40, lfw), _swapped(stock40)._mtcnn.detect(lfw), ["lfw"] * len(lfw)),
    )


def test_group_faces_all_found(faces_dir: Path, stock20: Stock) -> None:
    # Through FaceDetector as shipped (its 0.9 probability and min-size cut): every group face.
    paths = sorted((faces_dir / "groups").glob("*.jpg"))
    found = [len(f) for f in _swapped(stock20).detect([load(p) for p in paths])]
    expected = [int(p.stem.rsplit("_", 1)[1]) for p in paths]
    print(f"groups found {sum(found)} / expected {sum(expected)}")
    assert sum(expected) == 37
    assert found == expected


def test_formats_through_face_detector(faces_dir: Path, stock40: Stock) -> None:
    paths = sorted((faces_dir / "formats").iterdir())
    images = [Image.open(p) for p in paths]  # RGBA, palette, grayscale: converted inside
    ours = BatchedMTCNN(min_face_size=40).detect_faces(images)
    via_detector = _swapped(stock40).detect(images)
    assert [len(r) for r in via_detector] == [1] * len(paths), [p.name for p in paths]
    assert [len(r) for r in ours] == [1] * len(paths)
    boxes = np.array([r[0].box for r in via_detector])
    assert np.abs(boxes - boxes.mean(axis=0)).max() < 6.0


def test_batch_equals_single(faces_dir: Path) -> None:
    ours = BatchedMTCNN(min_face_size=20)
    images = [load(p) for p in sorted((faces_dir / "groups").glob("*.jpg"))[:4]]
    together = ours.detect_faces(images)
    alone = [ours.detect_faces([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert np.allclose(fa.box, fb.box, atol=1e-3)
            assert np.allclose(fa.landmarks, fb.landmarks, atol=1e-3)


def test_no_face_and_tiny_images() -> None:
    ours = BatchedMTCNN(min_face_size=40)
    blank = Image.new("RGB", (200, 120), (128, 128, 128))
    tiny = Image.new("RGB", (30, 30))
    boxes, probs, points = ours.detect([blank, tiny])
    assert boxes == [None, None] and probs == [None, None] and points == [None, None]
    assert ours.detect_faces([]) == []


# -- building blocks against the stock operations ----------------------------------------------


def test_area_resize_matches_interpolate() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 67, 91, 3), generator=g, dtype=torch.uint8)
    table = summed_area(pixels)
    chw = pixels.permute(0, 3, 1, 2).float()
    for size in [(21, 29), (67, 91), (5, 3), (40, 60)]:
        expected = F.interpolate(chw, size=size, mode="area")
        assert torch.allclose(area_resize(table, size), expected, atol=1e-3)
    bounds = torch.tensor([[0, 0, 91, 67], [10, 5, 11, 6], [3, 7, 50, 20], [60, 30, 91, 67]])
    inds = torch.tensor([0, 1, 1, 0])
    crops = crop_area_resize(table, inds, bounds, 24)
    for k, (x0, y0, x1, y1) in enumerate(bounds.tolist()):
        expected = F.interpolate(chw[inds[k], None, :, y0:y1, x0:x1], size=(24, 24), mode="area")[0]
        assert torch.allclose(crops[k], expected, atol=1e-3)


def test_pyramid_matches_interpolate() -> None:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (2, 90, 131, 3), generator=g, dtype=torch.uint8)
    scales = pyramid_scales(90, 131, 20, 0.709)
    levels = pyramid(summed_area(pixels), scales)
    chw = pixels.permute(0, 3, 1, 2).float()
    assert len(levels) == len(scales) > 3
    for level, s in zip(levels, scales, strict=True):
        expected = F.interpolate(chw, size=(int(90 * s + 1), int(131 * s + 1)), mode="area")
        assert level.shape == expected.shape
        assert torch.allclose(level, expected, atol=1e-3)


@pytest.mark.parametrize(
    ("net_class", "shape"), [(PNet, (2, 3, 61, 47)), (RNet, (70, 3, 24, 24)), (ONet, (20, 3, 48, 48))]
)
@pytest.mark.parametrize("onednn", [True, False])
def test_cascade_net_matches_the_trained_module(
    net_class: type, shape: tuple[int, ...], onednn: bool
) -> None:
    # Folded normalisation, merged heads, permuted dense columns, oneDNN or plain ops: the same
    # numbers as the modules facenet-pytorch's weights were written for, to float rounding.
    net = net_class().eval()
    fast = CascadeNet(net, device=torch.device("cpu"), max_pixels=4 * 48 * 48)
    fast.onednn_min_pixels = 0 if onednn else 10**9
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, shape, generator=g).float()
    with torch.inference_mode():
        ref = net((x - 127.5) * 0.0078125)
        out = fast(x)
    prob = ref[-1]
    assert torch.allclose(torch.sigmoid(out[:, 0]), prob, atol=1e-5)
    assert torch.allclose(out[:, 1:5], ref[0], atol=1e-4)
    if net_class is ONet:
        assert torch.allclose(out[:, 5:], ref[1], atol=1e-4)


def test_malloc_thresholds_pinned_on_glibc() -> None:
    import platform

    pinned = pin_malloc_thresholds()
    assert pinned == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_nms_min_matches_stock() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(1, 14))  # small sets: numpy's default argsort is then stable
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(5, 60, (n, 2))
        boxes = torch.as_tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        scores = torch.as_tensor(rng.uniform(0.7, 1.0, n), dtype=torch.float32)
        groups = torch.zeros(n, dtype=torch.int64)
        stock = batched_nms_numpy(boxes, scores, groups, 0.7, "Min")
        assert nms_min(boxes, scores, groups, 0.7).tolist() == stock.tolist()


def test_pyramid_scales() -> None:
    scales = pyramid_scales(512, 512, 40, 0.709)
    assert scales[0] == pytest.approx(0.3)
    assert len(scales) == 8
    assert pyramid_scales(30, 30, 40, 0.709) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_close_to_cpu(faces_dir: Path) -> None:
    images = [load(p) for p in sorted((faces_dir / "groups").glob("*.jpg"))]
    cpu = BatchedMTCNN(min_face_size=20).detect_faces(images)
    gpu = BatchedMTCNN(min_face_size=20, device="cuda", half=True).detect_faces(images)
    for a, b in zip(cpu, gpu, strict=True):
        strong_a = [f for f in a if f.probability >= 0.9]
        strong_b = [f for f in b if f.probability >= 0.9]
        assert len(strong_a) == len(strong_b)
