"""Batched MTCNN inference: facenet-pytorch's weights and algorithm, few launches per batch.

A re-implementation of the three-stage MTCNN cascade that facenet-pytorch 2.5.3's ``MTCNN``
runs, with the same defaults (``factor`` 0.709, stage thresholds 0.6 / 0.7 / 0.7), the same
arithmetic and the same resampling, so its results match the stock detector closely, but:

- P-Net: for each pyramid scale the whole batch is resized (area interpolation, as stock, from a
  summed-area table) and run in one call; candidates of all scales and images are decoded with
  tensor ops; NMS runs
  per (image, scale) at 0.5 in ONE ``batched_nms`` call, then per image across scales at 0.7;
- R-Net and O-Net: each runs once over ALL candidates of the batch. The crops are area-resized
  (exactly ``adaptive_avg_pool2d``'s bins, as stock's ``imresample``) from a summed-area table of
  each image: every output pixel is one rectangle sum, so all crops of all sizes come out of one
  gather instead of one ``interpolate`` per box;
- the final "Min" NMS of O-Net boxes is vectorised per image (stock loops in numpy).

Images of one batch may differ in size: they are grouped by size and each group is run as one
batch (no letterboxing, which would change the pyramid and hence the results). fp16 is used on
CUDA when ``half=True``; the CPU always runs fp32. Box decoding is always fp32.

``BatchedMTCNN.detect`` has the signature and return shape of facenet-pytorch's
``MTCNN.detect(images, landmarks=True)`` with ``keep_all=True, select_largest=False``, so it can
replace that object behind ``FaceDetector``; ``detect_faces`` returns ``DetectedFace`` lists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

from consentry.detectors.mtcnn_nets import ONet, PNet, RNet

if TYPE_CHECKING:
    from consentry.detectors.detection import DetectedFace

DEFAULT_FACTOR = 0.709  # facenet-pytorch's pyramid scale factor
# MTCNN's published per-stage thresholds, as detection.DEFAULT_STAGE_THRESHOLDS (not imported
# from there so that detection.py can import this module).
DEFAULT_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
_MEAN = 127.5
_SCALE = 0.0078125
# Upper bound on crops per R-/O-Net call: bounds memory only, a normal batch is one call.
_MAX_CROPS_PER_CALL = 16384

BatchResult = tuple[list[np.ndarray | None], list[np.ndarray | None], list[np.ndarray | None]]


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


def summed_area(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) 8-bit pixels -> (B, H + 1, W + 1, 3) summed-area table, exact: int32 while
    255 * H * W fits, else int64. Built with numpy on the CPU (about twice torch's cumsum)."""
    n, height, width, _ = images.shape
    wide = 255 * height * width >= 2**31
    if images.device.type == "cpu":
        dtype_np = np.int64 if wide else np.int32
        table_np = np.zeros((n, height + 1, width + 1, 3), dtype=dtype_np)
        arr = images.numpy()
        np.cumsum(arr, axis=1, dtype=dtype_np, out=table_np[:, 1:, 1:])
        np.cumsum(table_np[:, 1:, 1:], axis=2, out=table_np[:, 1:, 1:])
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


def _rect_means(
    table: torch.Tensor,
    rows: torch.Tensor,
    ys: torch.Tensor,
    ye: torch.Tensor,
    xs: torch.Tensor,
    xe: torch.Tensor,
) -> torch.Tensor:
    """Means of rectangles [ys, ye) x [xs, xe) of table's images: ``rows`` (N,) picks the image,
    ys/ye (N, P), xs/xe (N, Q) -> (N, 3, P, Q) float32."""
    _, h1, w1, _ = table.shape
    flat = table.reshape(-1, 3)
    base = (rows * h1)[:, None, None]

    def corner(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lin = ((base + y[:, :, None]) * w1 + x[:, None, :]).reshape(-1)
        return flat.index_select(0, lin)

    total = corner(ye, xe) - corner(ys, xe) - corner(ye, xs) + corner(ys, xs)
    n, p, q = rows.shape[0], ys.shape[1], xs.shape[1]
    area = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).reshape(-1, 1)
    means = total.to(torch.float32) / area.to(torch.float32)
    return means.reshape(n, p, q, 3).permute(0, 3, 1, 2)


def area_resize(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Whole images area-resized to ``size`` (h, w) from their table: (B, 3, h, w), equal (up to
    float rounding) to ``interpolate(images, size, mode="area")``, stock's ``imresample``.
    The bins are shared by all images, so rows and then columns are gathered separately."""
    _, h1, w1, _ = table.shape
    dev = table.device
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    ys, ye = (v[0] for v in _bins(zero, torch.tensor([h1 - 1], device=dev), size[0]))
    xs, xe = (v[0] for v in _bins(zero, torch.tensor([w1 - 1], device=dev), size[1]))
    bands = table.index_select(1, ye) - table.index_select(1, ys)  # (B, h, W + 1, 3)
    total = bands.index_select(2, xe) - bands.index_select(2, xs)  # (B, h, w, 3)
    area = ((ye - ys)[:, None] * (xe - xs)[None, :]).to(torch.float32)
    return (total.to(torch.float32) / area[None, :, :, None]).permute(0, 3, 1, 2)


def crop_area_resize(
    table: torch.Tensor, image_inds: torch.Tensor, bounds: torch.Tensor, size: int
) -> torch.Tensor:
    """Every box's crop area-resized to ``size`` x ``size`` in one gather: (N, 3, size, size).

    Equal (up to float rounding) to ``interpolate(image[:, y0:y1, x0:x1], size, mode="area")``
    per box, which is what stock MTCNN runs in a Python loop.
    """
    x0, y0, x1, y1 = bounds.unbind(1)
    xs, xe = _bins(x0, x1 - x0, size)
    ys, ye = _bins(y0, y1 - y0, size)
    return _rect_means(table, image_inds, ys, ye, xs, xe)


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


class BatchedMTCNN(nn.Module):
    """MTCNN face detection over whole batches (see the module docstring).

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
        super().__init__()
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must be three values, got {thresholds}")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.device = torch.device(device)
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        # The resized images and crops come out of the summed-area table channels_last (the
        # layout of oneDNN's fast pooling path). R-/O-Net weights channels_last too (faster on
        # their large crop batches); P-Net's stay NCHW (channels_last measured 2-7x slower at
        # batch 1 on the 2-core CPU).
        self.to(self.device, self.dtype).eval()
        self.rnet.to(memory_format=torch.channels_last)
        self.onet.to(memory_format=torch.channels_last)

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
            stacked = torch.from_numpy(np.stack([arrays[i] for i in indices]))
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
    def detect_tensor(self, images: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """One batch of equal-sized images, (B, H, W, 3) uint8 (integer values 0-255).

        Returns per image (boxes (n, 5): x1, y1, x2, y2, probability; landmarks (n, 5, 2)).
        """
        pixels = images.to(self.device)
        n_img, height, width, _ = pixels.shape
        t1, t2, t3 = self.thresholds
        empty = [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) for _ in range(n_img)]
        scales = pyramid_scales(height, width, self.min_face_size, self.factor)
        if n_img == 0 or not scales:
            return empty

        table = summed_area(pixels)

        # Stage 1: P-Net over the pyramid, one call per scale for the whole batch.
        cand_boxes, cand_inds, cand_groups = [], [], []
        for si, scale in enumerate(scales):
            size = (int(height * scale + 1), int(width * scale + 1))
            level = (area_resize(table, size) - _MEAN) * _SCALE
            reg, prob = self.pnet(level.to(self.dtype))
            prob = prob.float()
            where = (prob >= t1).nonzero()
            if where.shape[0] == 0:
                continue
            bi, yi, xi = where.unbind(1)
            score = prob[bi, yi, xi]
            offsets = reg[bi, :, yi, xi].float()
            xy = where[:, 1:].flip(1).to(torch.float32)
            q1 = ((2 * xy + 1) / scale).floor()
            q2 = ((2 * xy + 12) / scale).floor()
            cand_boxes.append(torch.cat([q1, q2, score[:, None], offsets], dim=1))
            cand_inds.append(where[:, 0])
            cand_groups.append(where[:, 0] * len(scales) + si)
        if not cand_boxes:
            return empty
        cand = torch.cat(cand_boxes)
        inds = torch.cat(cand_inds)
        keep = batched_nms(cand[:, :4], cand[:, 4], torch.cat(cand_groups), 0.5)
        cand, inds = cand[keep], inds[keep]
        keep = batched_nms(cand[:, :4], cand[:, 4], inds, 0.7)
        cand, inds = cand[keep], inds[keep]
        size_wh = cand[:, 2:4] - cand[:, 0:2]
        boxes = square(cand[:, 0:4] + cand[:, 5:9] * size_wh.repeat(1, 2))

        # Stage 2: R-Net over every candidate of the batch.
        boxes, inds = self._valid(boxes, inds, width, height)
        if boxes.shape[0] == 0:
            return empty
        crops = crop_area_resize(table, inds, crop_bounds(boxes, width, height), 24)
        reg, score = self._run(self.rnet, crops)
        passed = score > t2
        boxes, inds, reg, score = boxes[passed], inds[passed], reg[passed], score[passed]
        keep = batched_nms(boxes, score, inds, 0.7)
        boxes = square(calibrate(boxes[keep], reg[keep]))
        inds = inds[keep]

        # Stage 3: O-Net over every survivor of the batch.
        boxes, inds = self._valid(boxes, inds, width, height)
        if boxes.shape[0] == 0:
            return empty
        crops = crop_area_resize(table, inds, crop_bounds(boxes, width, height), 48)
        reg, marks, score = self._run(self.onet, crops)
        passed = score > t3
        boxes, inds, reg, marks, score = (
            boxes[passed],
            inds[passed],
            reg[passed],
            marks[passed],
            score[passed],
        )
        wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
        px = wh[:, 0:1] * marks[:, 0:5] + boxes[:, 0:1] - 1
        py = wh[:, 1:2] * marks[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)
        boxes = calibrate(boxes, reg)
        keep = nms_min(boxes, score, inds, 0.7)
        boxes_np = torch.cat([boxes[keep], score[keep, None]], dim=1).cpu().numpy()
        points_np = points[keep].cpu().numpy()
        inds_np = inds[keep].cpu().numpy()
        return [(boxes_np[inds_np == i], points_np[inds_np == i]) for i in range(n_img)]

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _valid(
        boxes: torch.Tensor, inds: torch.Tensor, width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Boxes whose clamped crop is empty (wholly outside the image): stock skips their crop
        # (and then misaligns its arrays); here they are dropped.
        b = crop_bounds(boxes, width, height)
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        return boxes[ok], inds[ok]

    def _run(self, net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = ((crops - _MEAN) * _SCALE).to(self.dtype)
        parts = [net(x[i : i + _MAX_CROPS_PER_CALL]) for i in range(0, x.shape[0], _MAX_CROPS_PER_CALL)]
        return tuple(torch.cat([p[k] for p in parts]).float() for k in range(len(parts[0])))
