"""Batched MTCNN inference: facenet-pytorch's weights and algorithm, few launches per batch.

A re-implementation of the three-stage MTCNN cascade that facenet-pytorch 2.5.3's ``MTCNN``
runs, with the same defaults (``factor`` 0.709, stage thresholds 0.6 / 0.7 / 0.7), the same
arithmetic and the same resampling, so its results match the stock detector closely, but:

- resampling comes from one summed-area table per image (``cv2.integral`` on the CPU, written
  in place): every output pixel of stock's area interpolation (``adaptive_avg_pool2d``'s bins)
  is one rectangle sum, so all levels of an image's pyramid are four gathers (the bin corners,
  indices cached per image size) and all R-/O-Net crops of a batch, of all sizes, are four
  gathers each, instead of one ``interpolate`` per scale and per box;
- P-Net: each pyramid scale runs once for the whole batch; candidates of all scales and images
  are thresholded (on the logit) and decoded in one pass; NMS runs per (image, scale) at 0.5 in
  ONE ``batched_nms`` call, then per image across scales at 0.7;
- R-Net and O-Net each run over ALL candidates of the batch (in cache-sized chunks);
- the nets run in inference form (:class:`~consentry.detectors.mtcnn_nets.CascadeNet`: input
  normalisation folded into the first layer, heads merged, on the CPU oneDNN with weights
  reordered once for large inputs and plain tensor ops for small ones; fp16 on CUDA when
  ``half=True``). The CPU computes in fp32 (bfloat16 broke parity, see mtcnn_nets);
- the final "Min" NMS of O-Net boxes is vectorised per image (stock loops in numpy);
- on glibc, freed activation memory stays in the heap between calls
  (:func:`pin_malloc_thresholds`: ~3,800 page faults per 512x512 image otherwise).

Measured on one core of the development Xeon (bench/detect_cpu.py): 3.1x stock's speed one
512x512 photo at a time, 3.6x in batches of 16, with the same faces (box IoU >= 0.99999).

Images of one batch may differ in size: they are grouped by size and each group is run as one
batch (no letterboxing, which would change the pyramid and hence the results). Box decoding is
always fp32.

``BatchedMTCNN.detect`` has the signature and return shape of facenet-pytorch's
``MTCNN.detect(images, landmarks=True)`` with ``keep_all=True, select_largest=False``, so it can
replace that object behind ``FaceDetector``; ``detect_faces`` returns ``DetectedFace`` lists.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms

from consentry.detectors.mtcnn_nets import CascadeNet, ONet, PNet, RNet

if TYPE_CHECKING:
    from consentry.detectors.detection import DetectedFace

DEFAULT_FACTOR = 0.709  # facenet-pytorch's pyramid scale factor
# MTCNN's published per-stage thresholds, as detection.DEFAULT_STAGE_THRESHOLDS (not imported
# from there so that detection.py can import this module).
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
# Input pixels per oneDNN call of each net (P, R, O) on the CPU (see CascadeNet), measured best
# on the 2-core Xeon: four 154x154 images, 64 R-Net crops, 16 O-Net crops.
_MAX_PIXELS = (100_000, 64 * 24 * 24, 16 * 48 * 48)

Corners = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
BatchResult = tuple[list[np.ndarray | None], list[np.ndarray | None], list[np.ndarray | None]]


# glibc's malloc thresholds, pinned where its own adaptive scheme tops out (mallopt(3)).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


@functools.cache
def pin_malloc_thresholds() -> bool:
    """Keep freed activation memory in the process heap instead of returning it to the kernel.

    A CPU detection call allocates and frees a few MB per layer. With glibc's default adaptive
    thresholds the heap top is trimmed after each call and the next call takes ~3,800 page
    faults per 512x512 image (measured: 5 ms of kernel time in a 28 ms detection). This pins
    the thresholds at the values glibc's own adaptation converges to for large blocks
    (mmap threshold 32 MB, trim threshold twice that), so at most 64 MB of free heap is kept.
    Process-wide, once; a no-op (False) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) == 1)
    except (OSError, AttributeError):
        return False


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Stock MTCNN's scale list: from 12 / min_face_size down while the short side stays >= 12."""
    m = 12.0 / min_face_size
    minl = min(height, width) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor
    return scales


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Stock ``rerec``: each (x1, y1, x2, y2) box made square on its longer side, same centre."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def calibrate(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Stock ``bbreg``: offsets scaled by the inclusive (+1) box size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def crop_bounds(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Stock ``pad``: truncated integer boxes clamped to the image, as 0-based half-open
    (x0, y0, x1, y1) pixel ranges (stock slices ``[y - 1 : ey, x - 1 : ex]``)."""
    b = boxes.trunc().to(torch.int64)
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = b[:, 2].clamp(max=width)
    y1 = b[:, 3].clamp(max=height)
    return torch.stack([x0, y0, x1, y1], dim=1)


def summed_area(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) 8-bit pixels -> (B, H + 1, W + 1, 3) summed-area table, exact: int32 while
    255 * H * W fits, else int64. On the CPU (or from numpy) ``cv2.integral`` per image (20x
    numpy's cumsum), on the images' device otherwise."""
    n, height, width, _ = images.shape
    wide = 255 * height * width >= 2**31
    if isinstance(images, np.ndarray) or images.device.type == "cpu":
        arr = images if isinstance(images, np.ndarray) else images.numpy()
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        if wide:  # float64 sums are exact far beyond int32
            tables = [cv2.integral(im, sdepth=cv2.CV_64F) for im in arr]
            return torch.from_numpy(np.stack(tables).astype(np.int64))
        table_np = np.empty((n, height + 1, width + 1, 3), dtype=np.int32)
        for i, im in enumerate(arr):
            cv2.integral(im, table_np[i], sdepth=cv2.CV_32S)  # in place: no 3 MB copy
        return torch.from_numpy(table_np)
    dtype = torch.int64 if wide else torch.int32
    table = torch.zeros((n, height + 1, width + 1, 3), dtype=dtype, device=images.device)
    table[:, 1:, 1:] = images.to(dtype).cumsum(1).cumsum(2)
    return table


def _bins(lo: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # adaptive_avg_pool2d's (= interpolate(mode="area")'s) bins along one axis:
    # [floor(i * L / S), ceil((i + 1) * L / S)), offset by lo. lo, length: (N,) -> (N, size).
    i = torch.arange(size, device=lo.device)
    start = (i[None, :] * length[:, None]) // size
    end = ((i[None, :] + 1) * length[:, None] + size - 1) // size
    return lo[:, None] + start, lo[:, None] + end


@functools.lru_cache(maxsize=32)
def _pyramid_plan(
    height: int, width: int, scales: tuple[float, ...], device: torch.device
) -> tuple[Corners, torch.Tensor, list[tuple[int, int]]]:
    """Where to read every output pixel of every pyramid level of a (H, W) image in its table
    (it depends on the image size only, hence cached): the four corner indices of its bin
    (end row & end column, end & start, start & end, start & start) and 1 / bin area."""
    sizes = [(int(height * s + 1), int(width * s + 1)) for s in scales]
    zero = torch.zeros(1, dtype=torch.int64)
    corners: list[list[torch.Tensor]] = [[], [], [], []]
    inv_area = []
    for h, w in sizes:
        ys, ye = (v[0] for v in _bins(zero, torch.tensor([height]), h))
        xs, xe = (v[0] for v in _bins(zero, torch.tensor([width]), w))
        for k, (rows, cols) in enumerate(((ye, xe), (ye, xs), (ys, xe), (ys, xs))):
            corners[k].append((rows[:, None] * (width + 1) + cols[None, :]).reshape(-1))
        inv_area.append((1.0 / ((ye - ys)[:, None] * (xe - xs)[None, :]).double()).float().reshape(-1))
    ee, es, se, ss = (torch.cat(c).to(device) for c in corners)
    return (ee, es, se, ss), torch.cat(inv_area).to(device), sizes


def pyramid(table: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
    """Every pyramid level of the table's images, raw 0-255 values, (B, 3, h, w) float32 each:
    equal (up to float rounding) to stock's ``imresample``, i.e. ``interpolate(images,
    (int(H * s + 1), int(W * s + 1)), mode="area")``, for every scale s.

    Per image, all levels at once: four gathers (the bin corners of every output pixel)."""
    n, h1, w1, _ = table.shape
    (ee, es, se, ss), inv_area, sizes = _pyramid_plan(h1 - 1, w1 - 1, tuple(scales), table.device)
    planes = torch.empty((n, 3, inv_area.shape[0]), dtype=torch.float32, device=table.device)
    for i in range(n):
        flat = table[i].reshape(-1, 3)
        total = flat.index_select(0, ee) - flat.index_select(0, es) - flat.index_select(0, se)
        planes[i].copy_(total.add_(flat.index_select(0, ss)).t())
    means = planes.mul_(inv_area)
    levels, offset = [], 0
    for h, w in sizes:
        levels.append(means[:, :, offset : offset + h * w].reshape(n, 3, h, w))
        offset += h * w
    return levels


def area_resize(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Whole images area-resized to ``size`` (h, w) from their table: (B, 3, h, w), equal (up to
    float rounding) to ``interpolate(images, size, mode="area")``, stock's ``imresample``."""
    _, h1, w1, _ = table.shape
    bounds = torch.tensor([[0, 0, w1 - 1, h1 - 1]], device=table.device)
    inds = torch.zeros(table.shape[0], dtype=torch.int64, device=table.device)
    out = [crop_area_resize(table[i : i + 1], inds[:1], bounds, size) for i in range(table.shape[0])]
    return torch.cat(out)


def crop_area_resize(
    table: torch.Tensor, image_inds: torch.Tensor, bounds: torch.Tensor, size: int | tuple[int, int]
) -> torch.Tensor:
    """Every box's crop area-resized to ``size`` in one gather: (N, 3, h, w) float32, raw values.

    Equal (up to float rounding) to ``interpolate(image[:, y0:y1, x0:x1], size, mode="area")``
    per box, which is what stock MTCNN runs in a Python loop.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x0, y0, x1, y1 = bounds.unbind(1)
    xs, xe = _bins(x0, x1 - x0, out_w)
    ys, ye = _bins(y0, y1 - y0, out_h)
    _, h1, w1, _ = table.shape
    flat = table.reshape(-1, 3)
    base = (image_inds * h1)[:, None]
    row_s = (base + ys) * w1  # (N, h)
    row_e = (base + ye) * w1

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (rows[:, :, None] + cols[:, None, :]).view(-1))

    total = corner(row_e, xe).sub_(corner(row_s, xe)).sub_(corner(row_e, xs)).add_(corner(row_s, xs))
    n = bounds.shape[0]
    crops = torch.empty((n, 3, out_h, out_w), dtype=torch.float32, device=table.device)
    crops.copy_(total.view(n, out_h, out_w, 3).permute(0, 3, 1, 2))
    inv_area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).to(torch.float32).reciprocal_()
    return crops.mul_(inv_area[:, None])


def nms_min(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Greedy NMS with stock's "Min" overlap (intersection over the smaller box, +1 pixel
    convention), per group; returns kept indices, highest score first (ties as stock)."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    b = boxes.detach().to("cpu", torch.float64).numpy()
    s = scores.detach().to("cpu", torch.float32).numpy()
    g = groups.detach().cpu().numpy()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.maximum(
        0.0, np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + 1
    )
    ih = np.maximum(
        0.0, np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + 1
    )
    overlap = iw * ih / np.minimum(area[:, None], area[None, :])
    suppresses = (overlap > threshold) & (g[:, None] == g[None, :])
    # Stock's order: numpy's default argsort, walked from the end (among tied scores, often 1.0
    # in float32, the later candidate wins, as in stock).
    order = np.argsort(s)[::-1]
    alive = np.ones(n, dtype=bool)
    keep = []
    for i in order:
        if alive[i]:
            keep.append(i)
            alive &= ~suppresses[i]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=boxes.device)


class BatchedMTCNN:
    """MTCNN face detection over whole batches (see the module docstring).

    ``half`` (CUDA only): fp16 nets.
    Stateless at inference: one instance may be shared by threads.
    """

    def __init__(
        self,
        *,
        min_face_size: float = 20,
        thresholds: Sequence[float] = DEFAULT_STAGE_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        device: str | torch.device = "cpu",
        half: bool = False,
    ) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be three values, got {thresholds}")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.device = torch.device(device)
        if self.device.type == "cpu":
            pin_malloc_thresholds()
        dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.pnet, self.rnet, self.onet = (
            CascadeNet(net.eval(), device=self.device, dtype=dtype, max_pixels=max_pixels)
            for net, max_pixels in zip((PNet(), RNet(), ONet()), _MAX_PIXELS, strict=True)
        )
        self.dtype = self.pnet.dtype

    # -- public API -----------------------------------------------------------------------------

    def detect(self, images: Image.Image | Sequence[Image.Image], landmarks: bool = True) -> BatchResult:
        """Like facenet-pytorch's ``MTCNN.detect(images, landmarks=True)`` for a list: per image
        boxes (n, 4), probabilities (n,), landmarks (n, 5, 2) as numpy, or None for no face;
        faces in decreasing probability. Images may differ in size. ``landmarks`` is accepted
        for signature compatibility; landmarks are always returned."""
        del landmarks
        batch = [images] if isinstance(images, Image.Image) else list(images)
        arrays = [np.asarray(im if im.mode == "RGB" else im.convert("RGB")) for im in batch]
        boxes: list[np.ndarray | None] = [None] * len(arrays)
        probs: list[np.ndarray | None] = [None] * len(arrays)
        points: list[np.ndarray | None] = [None] * len(arrays)
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, arr in enumerate(arrays):
            by_size[arr.shape].append(i)
        for indices in by_size.values():
            group = [arrays[i] for i in indices]
            # One image on the CPU is read where PIL left it (read-only); else a fresh array.
            single = len(group) == 1 and self.device.type == "cpu"
            stacked = group[0][None] if single else np.stack(group)
            for i, (b, p) in zip(indices, self.detect_tensor(stacked), strict=True):
                if len(b):
                    boxes[i], probs[i], points[i] = b[:, :4], b[:, 4], p
        return boxes, probs, points

    def detect_faces(self, images: Sequence[Image.Image]) -> list[list[DetectedFace]]:
        """Every face MTCNN's last stage passes (no extra probability or size cut), per image."""
        from consentry.detectors.detection import DetectedFace

        out: list[list[DetectedFace]] = []
        for b, p, lm in zip(*self.detect(images), strict=True):
            faces: list[DetectedFace] = []
            if b is not None and p is not None and lm is not None:
                for box, prob, pts in zip(b.tolist(), p.tolist(), lm.tolist(), strict=True):
                    l0, l1, l2, l3, l4 = ((float(x), float(y)) for x, y in pts)
                    x1, y1, x2, y2 = box
                    faces.append(
                        DetectedFace(box=(x1, y1, x2, y2), probability=prob, landmarks=(l0, l1, l2, l3, l4))
                    )
            out.append(faces)
        return out

    @torch.inference_mode()
    def detect_tensor(self, images: torch.Tensor | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """One batch of equal-sized images, (B, H, W, 3) uint8 (integer values 0-255), a tensor
        or (on the CPU, read as is) a numpy array.

        Returns per image (boxes (n, 5): x1, y1, x2, y2, probability; landmarks (n, 5, 2)).
        """
        cpu_numpy = isinstance(images, np.ndarray) and self.device.type == "cpu"
        pixels = images if cpu_numpy else torch.as_tensor(images).to(self.device)
        n_img, height, width, _ = pixels.shape
        empty = [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) for _ in range(n_img)]
        scales = pyramid_scales(height, width, self.min_face_size, self.factor)
        if n_img == 0 or not scales:
            return empty
        table = summed_area(pixels)
        boxes, inds = self._proposals(table, scales)
        boxes, inds = self._refine(table, boxes, inds)
        if boxes.shape[0] == 0:
            return empty
        boxes, points, inds = self._output(table, boxes, inds)
        boxes_np, points_np, inds_np = boxes.cpu().numpy(), points.cpu().numpy(), inds.cpu().numpy()
        return [(boxes_np[inds_np == i], points_np[inds_np == i]) for i in range(n_img)]

    # -- stages ---------------------------------------------------------------------------------

    def _proposals(self, table: torch.Tensor, scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over the pyramid (one call per scale for the whole batch), candidates
        of all scales decoded at once, NMS per (image, scale) then per image; square boxes."""
        n_img = table.shape[0]
        # P-Net's threshold on its logit: sigmoid(z) >= t  <=>  z >= log(t / (1 - t)).
        t1 = self.thresholds[0]
        logit_t1 = math.log(t1 / (1 - t1)) if 0 < t1 < 1 else (-math.inf if t1 <= 0 else math.inf)
        maps = [self.pnet(level) for level in pyramid(table, scales)]  # (B, 5, h, w) each
        widths = [m.shape[3] for m in maps]
        sizes = torch.tensor([m.shape[2] * m.shape[3] for m in maps], device=table.device)
        out = torch.cat([m.reshape(n_img, 5, -1) for m in maps], dim=2)  # all scales' positions
        where = (out[:, 0] >= logit_t1).nonzero()
        img, pos = where.unbind(1)
        ends = sizes.cumsum(0)
        level = torch.searchsorted(ends, pos, right=True)
        local = pos - (ends - sizes)[level]
        w = torch.tensor(widths, device=table.device)[level]
        scale = torch.tensor(scales, dtype=torch.float32, device=table.device)[level]
        xy = torch.stack([local % w, local // w], dim=1).to(torch.float32)
        picked = out[img, :, pos]  # (K, 5): logit, 4 offsets
        score = torch.sigmoid(picked[:, 0])
        q1 = ((2 * xy + 1) / scale[:, None]).floor()
        q2 = ((2 * xy + 12) / scale[:, None]).floor()
        cand = torch.cat([q1, q2], dim=1)
        keep = batched_nms(cand, score, img * len(scales) + level, 0.5)
        cand, score, img, offsets = cand[keep], score[keep], img[keep], picked[keep, 1:]
        keep = batched_nms(cand, score, img, 0.7)
        cand, img, offsets = cand[keep], img[keep], offsets[keep]
        size_wh = cand[:, 2:4] - cand[:, 0:2]
        return square(cand + offsets * size_wh.repeat(1, 2)), img

    def _refine(
        self, table: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net over every candidate of the batch; NMS per image; calibrated squares."""
        height, width = table.shape[1] - 1, table.shape[2] - 1
        boxes, inds, bounds = self._valid(boxes, inds, width, height)
        if boxes.shape[0] == 0:
            return boxes, inds
        crops = crop_area_resize(table, inds, bounds, 24)
        out = self.rnet(crops)
        score = torch.sigmoid(out[:, 0])
        passed = score > self.thresholds[1]
        boxes, inds, reg, score = boxes[passed], inds[passed], out[passed, 1:5], score[passed]
        keep = batched_nms(boxes, score, inds, 0.7)
        return square(calibrate(boxes[keep], reg[keep])), inds[keep]

    def _output(
        self, table: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net over every survivor; landmarks; "Min" NMS per image.
        Returns boxes (n, 5: x1, y1, x2, y2, probability), landmarks (n, 5, 2), image index."""
        height, width = table.shape[1] - 1, table.shape[2] - 1
        boxes, inds, bounds = self._valid(boxes, inds, width, height)
        if boxes.shape[0] == 0:
            return boxes.new_zeros((0, 5)), boxes.new_zeros((0, 5, 2)), inds
        crops = crop_area_resize(table, inds, bounds, 48)
        out = self.onet(crops)
        score = torch.sigmoid(out[:, 0])
        passed = score > self.thresholds[2]
        boxes, inds, out, score = boxes[passed], inds[passed], out[passed], score[passed]
        reg, marks = out[:, 1:5], out[:, 5:15]
        wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
        px = wh[:, 0:1] * marks[:, 0:5] + boxes[:, 0:1] - 1
        py = wh[:, 1:2] * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)
        boxes = calibrate(boxes, reg)
        keep = nms_min(boxes, score, inds, 0.7)
        return torch.cat([boxes[keep], score[keep, None]], dim=1), points[keep], inds[keep]

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _valid(
        boxes: torch.Tensor, inds: torch.Tensor, width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The boxes, their images and their crop bounds, less boxes whose clamped crop is empty
        (wholly outside the image): stock skips their crop (and then misaligns its arrays)."""
        b = crop_bounds(boxes, width, height)
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if bool(ok.all()):
            return boxes, inds, b
        return boxes[ok], inds[ok], b[ok]
