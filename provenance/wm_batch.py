"""Many images at once: :class:`Watermarker`'s embed, verify and decode on the torch twin.

:class:`TorchBatch` does what :meth:`Watermarker.embed_verified` and :meth:`Watermarker.decode`
do one image at a time, for a list of images, with every equally sized group marked or read in
one pass of :class:`provenance.wm_torch.TorchSpread` (on the GPU when there is one):

* decode: per key, current first, the original scale of every still-unfound image at once
  (Viterbi on the first 9 candidate rows, then on the other 63 for images not found there); then,
  per key, the numpy scale search (``TiledSpreadSpectrum.rescaled_candidates``) for the images
  still not found; the first CRC match wins, in the order the one-image decoder tries candidates;
* embed-and-verify: each rung of the strength ladder marks the images still pending at once; the
  simulated redistribution (JPEG 75, half size and back: Pillow, on the CPU) runs in threads; the
  copies and the marked images are decoded in batches; images that miss the margin go up a rung.
  As one by one, the whole request fails (:class:`WatermarkNotDecodableError`) if any image
  misses it at the last rung: nothing half-marked leaves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError
from consentry.provenance.watermark import (
    FIRST_ROWS,
    MIN_SIDE,
    VERIFY_AGREEMENT,
    Watermarker,
    WatermarkNotDecodableError,
    WatermarkReading,
    _KeyedReader,
    _reading,
    simulate_redistribution,
)
from consentry.provenance.wm_spread import MIN_DECODE_SIDE, TiledSpreadSpectrum, luma
from consentry.provenance.wm_torch import TorchSpread, viterbi

__all__ = ["MAX_BATCH", "TorchBatch", "batched_for", "resolve_device"]

MAX_BATCH = 16  # images per pass: bounds memory (16 x 1024^2 float64 planes ~ 128 MB)


def resolve_device(device: str) -> torch.device | None:
    """Where batched marks run: None for numpy (``cpu``, or ``auto`` without CUDA: numpy is the
    faster CPU path), else the CUDA device. An absent CUDA asked for by name is a config error."""
    if device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigurationError(f"unknown torch device {device!r}", code=codes.CONFIG_DEVICE) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {device!r} was requested but CUDA is not available", code=codes.CONFIG_DEVICE
        )
    return None if resolved.type == "cpu" else resolved


def batched_for(watermarker: Watermarker, device: str) -> TorchBatch | None:
    """The torch twin of ``watermarker`` on ``device`` (see :func:`resolve_device`), or None."""
    resolved = resolve_device(device)
    return None if resolved is None else TorchBatch(watermarker, resolved)


def _rgb(image: Image.Image) -> NDArray[np.uint8]:
    return np.asarray(image.convert("RGB"))


def _groups(arrays: Sequence[NDArray[np.uint8]], indices: Sequence[int]) -> Iterator[list[int]]:
    """``indices`` grouped by image shape, in chunks of at most :data:`MAX_BATCH`."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        by_shape.setdefault(arrays[i].shape, []).append(i)
    for group in by_shape.values():
        for start in range(0, len(group), MAX_BATCH):
            yield group[start : start + MAX_BATCH]


class TorchBatch:
    """A :class:`Watermarker`'s keys on torch; ``device`` may also be the CPU (benchmarks, tests)."""

    def __init__(self, watermarker: Watermarker, device: torch.device | str) -> None:
        self.wm = watermarker
        self.device = torch.device(device)
        readers: tuple[_KeyedReader, ...] = watermarker._readers
        if not all(isinstance(r.method, TiledSpreadSpectrum) for r in readers):
            raise TypeError("the torch twin mirrors TiledSpreadSpectrum only")
        self.readers = readers
        self.spreads = [TorchSpread(r.method, self.device) for r in readers]  # type: ignore[arg-type]

    def _upload(self, arrays: Sequence[NDArray[np.uint8]], group: Sequence[int]) -> torch.Tensor:
        stacked = torch.from_numpy(np.stack([arrays[i] for i in group]))
        return stacked.to(self.device, non_blocking=True)

    # ---- embedding ----
    def embed(
        self, images: Sequence[Image.Image], payloads: Sequence[bytes], strength: int = 0
    ) -> list[Image.Image]:
        """:meth:`Watermarker.embed` of ``images[i]`` with ``payloads[i]`` at rung ``strength``."""
        for image in images:
            if min(image.size) < MIN_SIDE:
                raise BadInputError(
                    f"images under {MIN_SIDE}x{MIN_SIDE} cannot carry the watermark (got "
                    f"{image.width}x{image.height})",
                    code=codes.WATERMARK_IMAGE_TOO_SMALL,
                )
        coded = [self.wm._coded(p) for p in payloads]
        rung = self.wm.strengths[min(max(strength, 0), len(self.wm.strengths) - 1)]
        arrays = [_rgb(im) for im in images]
        out: dict[int, NDArray[np.uint8]] = {}
        spread = self.spreads[0]  # the current key embeds
        for group in _groups(arrays, range(len(arrays))):
            bits = torch.from_numpy(np.stack([coded[i] for i in group])).to(self.device)
            strength_t = torch.full((len(group),), rung, dtype=torch.float64, device=self.device)
            marked = spread.embed(self._upload(arrays, group), bits, strength_t).cpu().numpy()
            out.update(zip(group, marked, strict=True))
        result = []
        for i, image in enumerate(images):
            marked_image = Image.fromarray(out[i])
            if image.mode in ("RGBA", "LA"):
                marked_image.putalpha(image.getchannel("A"))
            result.append(marked_image)
        return result

    def embed_verified(
        self, images: Sequence[Image.Image], payload: bytes, attempts: int = 3
    ) -> list[Image.Image]:
        """:meth:`Watermarker.embed_verified` for every image, or the error for all of them."""
        wm = self.wm
        rungs = max(1, min(attempts, len(wm.strengths)))
        done: list[Image.Image | None] = [None] * len(images)
        pending = list(range(len(images)))
        workers = min(len(images), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for strength in range(rungs):
                marked = self.embed([images[i] for i in pending], [payload] * len(pending), strength)
                copies = list(pool.map(simulate_redistribution, marked))
                survived = self.decode(copies)
                kept = [
                    k
                    for k, r in enumerate(survived)
                    if r.found
                    and r.payload == payload
                    and r.confidence >= VERIFY_AGREEMENT
                    and r.key_id == wm.current_key_id
                ]
                direct = self.decode([marked[k] for k in kept])
                for k, reading in zip(kept, direct, strict=True):
                    if reading.payload == payload:
                        done[pending[k]] = marked[k]
                pending = [i for i in pending if done[i] is None]
                if not pending:
                    return [im for im in done if im is not None]
        raise WatermarkNotDecodableError(
            f"watermark {payload.hex()} did not survive JPEG 75 + resize after {rungs} attempt(s) "
            f"on {len(pending)} of {len(images)} image(s)",
            strengths=[wm.strengths[i] for i in range(rungs)],
        )

    # ---- decoding ----
    def decode(self, images: Sequence[Image.Image]) -> list[WatermarkReading]:
        """:meth:`Watermarker.decode` of each image."""
        arrays = [_rgb(im) for im in images]
        found: dict[int, WatermarkReading] = {}
        pending = [i for i, a in enumerate(arrays) if min(a.shape[:2]) >= MIN_DECODE_SIDE]
        # As Watermarker.decode: every key at the original scale, then every key's scale search.
        for reader, spread in zip(self.readers, self.spreads, strict=True):
            for group in _groups(arrays, pending):
                found.update(self._original_scale(reader, spread, arrays, group))
            pending = [i for i in pending if i not in found]
        for reader in self.readers:
            method = reader.method
            assert isinstance(method, TiledSpreadSpectrum)
            for i in pending:
                reading = self.wm._first_found(reader, method.rescaled_candidates(luma(arrays[i])))
                if reading is not None:
                    found[i] = reading
            pending = [i for i in pending if i not in found]
        nothing = WatermarkReading(found=False, payload=None, confidence=0.0)
        return [found.get(i, nothing) for i in range(len(arrays))]

    def _original_scale(
        self,
        reader: _KeyedReader,
        spread: TorchSpread,
        arrays: Sequence[NDArray[np.uint8]],
        group: Sequence[int],
    ) -> dict[int, WatermarkReading]:
        soft, _, _ = spread.candidates(self._upload(arrays, group))
        found: dict[int, WatermarkReading] = {}
        todo = list(range(len(group)))
        for rows in (slice(0, FIRST_ROWS), slice(FIRST_ROWS, None)):
            if not todo:
                break
            part = soft[todo, rows]  # (images, rows, coded)
            n_rows = part.shape[1]
            flat = part.reshape(-1, part.shape[2])
            info = viterbi(flat).cpu().numpy()
            frames = reader.code.frames(info, flat.cpu().numpy())
            for k, local in enumerate(todo):
                rows_of_image = frames[k * n_rows : (k + 1) * n_rows]
                frame = next((f for f in rows_of_image if f.payload is not None), None)
                if frame is not None:
                    found[group[local]] = _reading(reader, frame, 1.0)
            todo = [local for local in todo if group[local] not in found]
        return found
