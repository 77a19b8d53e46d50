"""The tiled spread-spectrum mark of :mod:`provenance.wm_spread` on torch: a batch at a time.

One :class:`TorchSpread` is the torch twin of one key's :class:`TiledSpreadSpectrum`: it takes
the key's layout from it and runs the same arithmetic over a batch of equally sized images in a
few kernel launches per stage (luma, fold, FFTs, the outlier weights, the informed-embedding
bisection, the sync search and the per-shift bit statistics), on a GPU or on the CPU.
:func:`viterbi` is :func:`provenance.wm_codes.viterbi_decode` on torch, many rows at once.

What equals the numpy path, and how exactly (``tests/provenance/test_wm_torch.py``):

* the luma plane: bit-identical (OpenCV's 15-bit fixed-point BT.601, integer arithmetic);
* everything spectral is float64, so candidate soft values agree with numpy's to ~1e-9
  (FFT libraries round differently); sync peaks, candidate order, Viterbi bits, CRC checks and
  so the decoded payload and the found / not-found decision are the same;
* embedding: the mask's box blurs are float32 and summed in another order, so a marked pixel
  may differ from numpy's by one grey level (a handful of pixels per image); each backend
  decodes the other's marks.

Only the original scale is read here; the rare image not found there (a copy kept at another
size, or no mark at all) goes on to the numpy scale search (:mod:`provenance.wm_batch`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from consentry.provenance.wm_codes import _OUT0, _OUT1, _PRED0, _PRED1, GENERATORS, INFO_BITS, MEMORY
from consentry.provenance.wm_spread import (
    FLOOR,
    MASK_RANGE,
    OUTLIER,
    SYNC_PEAKS,
    SYNC_POWER_SHARE,
    TiledSpreadSpectrum,
)

__all__ = ["TorchSpread", "luma", "viterbi"]

F64 = torch.float64
_BISECTION_STEPS = 50  # as TiledSpreadSpectrum.embed


def luma(rgb: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, H, W) float32, exactly ``cv2.cvtColor(RGB2GRAY)``: OpenCV
    rounds 0.299 R + 0.587 G + 0.114 B in 15-bit fixed point."""
    x = rgb.to(torch.int32)
    y = (x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)) >> 15
    return y.to(torch.float32)


def fold(plane: Tensor, tile: int) -> Tensor:
    """(B, H, W) -> (B, tile, tile) float64: every tile-sized block summed (ragged edge zero)."""
    b, h, w = plane.shape
    hp, wp = -(-h // tile) * tile, -(-w // tile) * tile
    padded = F.pad(plane.to(F64), (0, wp - w, 0, hp - h))
    return padded.reshape(b, hp // tile, tile, wp // tile, tile).sum(dim=(1, 3))


def _box(x: Tensor, k: int) -> Tensor:
    """``cv2.blur`` with its default border (reflect-101) on (B, H, W) float32."""
    r = k // 2
    padded = F.pad(x[:, None], (r, r, r, r), mode="reflect")[:, 0].to(F64)
    # Running sums in float64, as OpenCV sums float32 images: differences of prefix sums give
    # every window's sum (exact for the integer luma), then one scale to the mean.
    rows = F.pad(torch.cumsum(padded, dim=2), (1, 0))
    rows = rows[:, :, k:] - rows[:, :, :-k]
    cols = F.pad(torch.cumsum(rows, dim=1), (0, 0, 1, 0))
    return ((cols[:, k:] - cols[:, :-k]) * (1.0 / (k * k))).to(torch.float32)


class TorchSpread:
    """One key's :class:`TiledSpreadSpectrum`, batched on ``device``."""

    def __init__(self, method: TiledSpreadSpectrum, device: torch.device | str) -> None:
        dev = self.device = torch.device(device)
        lay, t = method._lay, method.tile
        self.tile, self.n_coded = t, lay.n_coded

        def put(a: NDArray[np.generic]) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), device=dev)

        self.shape = lay.shape
        self.weight = put(lay.weight)
        self.sync, self.sync_pn = put(lay.sync), put(lay.sync_pn)
        self.msg, self.msg_pn, self.owner = put(lay.msg), put(lay.msg_pn), put(lay.owner)
        by_owner = np.argsort(lay.owner, kind="stable")  # numpy's bincount adds in this order
        self.msg_by_bit = put(lay.msg[by_owner].reshape(lay.n_coded, -1))
        self.pn_by_bit = put(lay.msg_pn[by_owner].reshape(lay.n_coded, -1))
        self.per_bit = float(len(lay.msg) // lay.n_coded)
        self.n_sync, self.n_msg = len(lay.sync), len(lay.msg)
        self.sync_template = put(method._sync_template)
        self.msg_bins = put(method._msg_bins)
        self.msg_cols, self.msg_pn_sorted = put(method._msg_cols), put(method._msg_pn_sorted)
        self.msg_fu, self.msg_fv = put(method._msg_fu), put(method._msg_fv)
        self.unit_circle = put(method._unit_circle)
        # Rings padded to one length: (rings, longest) bin indices, and where each ring ends.
        rings = method._rings
        longest = max(len(r) for r in rings)
        index = np.zeros((len(rings), longest), dtype=np.int64)
        for i, ring in enumerate(rings):
            index[i, : len(ring)] = ring
        lengths = np.array([len(r) for r in rings])
        self.ring_index = put(index)
        self.ring_pad = put(np.arange(longest)[None, :] >= lengths[:, None])
        self.ring_lo, self.ring_hi = put((lengths - 1) // 2), put(lengths // 2)
        owner_ring = np.full(lay.weight.size, len(rings), dtype=np.int64)  # out of band: a zero
        for i, ring in enumerate(rings):
            owner_ring[ring] = i
        self.ring_of_bin = put(owner_ring)
        offsets = [(a, b) for a in (0, -1, 1) for b in (0, -1, 1)]
        self.offsets = put(np.array(offsets, dtype=np.int64))
        self.positions = torch.arange(t, device=dev)

    # ---- the decoder's statistic, as TiledSpreadSpectrum's ----
    def weights(self, raw: Tensor) -> Tensor:
        """``TiledSpreadSpectrum._weights`` for a batch of raw tile spectra (B, t, t//2+1)."""
        power = torch.abs(raw) ** 2
        rows = torch.stack([torch.roll(power, du, dims=1) for du in range(-2, 3)]).sum(dim=0)
        local = torch.stack([torch.roll(rows, dv, dims=2) for dv in range(-2, 3)]).sum(dim=0)
        flat = local.reshape(len(raw), -1)
        ring_values = flat[:, self.ring_index].masked_fill(self.ring_pad, float("inf"))
        ordered = torch.sort(ring_values, dim=-1).values
        lo = ordered.gather(-1, self.ring_lo.expand(len(raw), -1)[..., None])[..., 0]
        hi = ordered.gather(-1, self.ring_hi.expand(len(raw), -1)[..., None])[..., 0]
        medians = F.pad((lo + hi) / 2, (0, 1))  # numpy's median: the mean of the middle two
        ref = medians[:, self.ring_of_bin]
        cut = torch.where(flat > OUTLIER * ref, OUTLIER * ref / flat.clamp_min(1e-30), 1.0)
        return self.weight * cut.reshape(raw.shape)

    def spectrum(self, folded: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raw = torch.fft.rfft2(folded)
        w = self.weights(raw) if weights is None else weights
        return raw * w, w

    def bit_stats(self, spectrum: Tensor) -> Tensor:
        dof = torch.view_as_real(spectrum).reshape(len(spectrum), -1)
        return (dof[:, self.msg_by_bit] * self.pn_by_bit).sum(dim=-1)

    def pattern(self, bit_amp: Tensor, sync_amp: Tensor) -> Tensor:
        b = len(bit_amp)
        spec = torch.zeros(b, 2 * self.weight.numel(), dtype=F64, device=self.device)
        spec[:, self.sync] = self.sync_pn * sync_amp[:, None]
        spec[:, self.msg] = self.msg_pn * bit_amp[:, self.owner]
        complex_spec = torch.view_as_complex(spec.reshape(b, -1, 2)).reshape(b, *self.shape)
        return torch.fft.irfft2(complex_spec, s=(self.tile, self.tile))

    @staticmethod
    def mask(y: Tensor) -> Tensor:
        activity = _box(torch.abs(y - _box(y, 3)), 9)
        scale = activity.mean(dim=(1, 2), keepdim=True) + 1e-6
        m = torch.clamp(activity / scale, *MASK_RANGE)
        return m / torch.sqrt(torch.mean(m * m, dim=(1, 2), keepdim=True))

    # ---- embedding ----
    def embed(self, rgb: Tensor, coded: Tensor, strength: Tensor) -> Tensor:
        """Marked copies of (B, H, W, 3) uint8 images carrying ``coded`` (B, n_coded) 0/1 bits at
        RMS ``strength`` (B,) grey levels: ``TiledSpreadSpectrum.embed`` for each image."""
        t = self.tile
        y = luma(rgb)
        _, h, w = y.shape
        mask = self.mask(y)
        sign = 2.0 * coded.to(F64) - 1.0
        host_spec, weights = self.spectrum(fold(y - y.mean(dim=(1, 2), keepdim=True), t))
        host = self.bit_stats(host_spec) * sign
        unit = self.pattern(sign, torch.ones(len(y), dtype=F64, device=self.device))
        gain = self.bit_stats(self.spectrum(unit * fold(mask, t), weights)[0]) * sign
        ordered = torch.sort(gain, dim=1).values  # numpy's median of an even count
        n = gain.shape[1]
        median = (ordered[:, (n - 1) // 2] + ordered[:, n // 2]) / 2
        gain = torch.maximum(gain, 0.1 * median[:, None])
        budget = strength.to(F64) ** 2 * t**4 / 2.0
        sync_amp = torch.sqrt(SYNC_POWER_SHARE * budget / self.n_sync)
        msg_budget = (1.0 - SYNC_POWER_SHARE) * budget
        floor = (FLOOR * torch.sqrt(msg_budget / self.n_msg))[:, None]

        def amplitudes(margin: Tensor) -> Tensor:
            return torch.maximum(floor, (margin[:, None] - host) / gain)

        low = torch.amin(host + gain * floor, dim=1)
        high = torch.amax(host, dim=1) + torch.amax(gain, dim=1) * torch.sqrt(msg_budget)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (low + high)
            over = torch.sum(self.per_bit * amplitudes(mid) ** 2, dim=1) > msg_budget
            low, high = torch.where(over, low, mid), torch.where(over, mid, high)
        pattern = self.pattern(amplitudes(low) * sign, sync_amp)
        reps = (-(-h // t), -(-w // t))
        delta = pattern.repeat(1, *reps)[:, :h, :w] * mask
        out = rgb.to(torch.float32) + delta.to(torch.float32)[..., None]
        return torch.clamp(torch.round(out), 0, 255).to(torch.uint8)

    # ---- decoding at the original scale ----
    def candidates(self, rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``TiledSpreadSpectrum``'s first candidate batch (the original scale) for every
        image: soft values (B, 72, n_coded), shifts (B, 72, 2) and sync heights (B, 72)."""
        t = self.tile
        y = luma(rgb)
        spectrum, _ = self.spectrum(fold(y - y.mean(dim=(1, 2), keepdim=True), t))
        corr = torch.fft.irfft2(spectrum * torch.conj(self.sync_template), s=(t, t))
        b = len(corr)
        flat = corr.reshape(b, -1)
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, correction=0) + 1e-12
        work = flat.clone()
        peaks, z = [], []
        for _ in range(SYNC_PEAKS):
            at = torch.argmax(work, dim=1)  # the first of equal values, as numpy's
            dy, dx = at // t, at % t
            peaks.append(torch.stack([dy, dx], dim=1))
            z.append((flat.gather(1, at[:, None])[:, 0] - mean) / std)
            near_y = (self.positions[None, :] - dy[:, None] + 3) % t <= 6
            near_x = (self.positions[None, :] - dx[:, None] + 3) % t <= 6
            work = work.masked_fill((near_y[:, :, None] & near_x[:, None, :]).reshape(b, -1), -torch.inf)
        shifts = (torch.stack(peaks, dim=1)[:, :, None, :] + self.offsets) % t
        shifts = shifts.reshape(b, -1, 2)
        soft = self.bit_stats_at(spectrum, shifts)
        soft = soft / (soft.std(dim=2, keepdim=True, correction=0) + 1e-12)
        sync_z = torch.stack(z, dim=1).repeat_interleave(len(self.offsets), dim=1)
        return soft, shifts, sync_z

    def bit_stats_at(self, spectrum: Tensor, shifts: Tensor) -> Tensor:
        """Per-bit statistics after undoing each cyclic shift: (B, S, n_coded)."""
        t, b, s = self.tile, shifts.shape[0], shifts.shape[1]
        turns = (shifts[..., 0, None] * self.msg_fu + shifts[..., 1, None] * self.msg_fv) % t
        bins = spectrum.reshape(b, -1)[:, self.msg_bins]
        dof = torch.view_as_real(self.unit_circle[turns] * bins[:, None, :]).reshape(b, s, -1)
        return (dof[..., self.msg_cols] * self.msg_pn_sorted).reshape(b, s, self.n_coded, -1).sum(dim=-1)


def viterbi(soft: Tensor, n_info: int = INFO_BITS) -> Tensor:
    """:func:`provenance.wm_codes.viterbi_decode` on torch: (N, n_coded) float64 soft values ->
    (N, n_info) uint8 bits, the same add-compare-select in the same float64 arithmetic."""
    dev, n = soft.device, soft.shape[0]
    steps, k = n_info + MEMORY, len(GENERATORS)
    states = 1 << MEMORY
    out0, out1 = (torch.as_tensor(o, device=dev) for o in (_OUT0, _OUT1))
    pred0, pred1 = (torch.as_tensor(p, dtype=torch.int64, device=dev) for p in (_PRED0, _PRED1))
    sym = (-soft[:, : steps * k]).reshape(n, steps, k).permute(1, 0, 2)

    def branch(outputs: Tensor) -> Tensor:
        total = sym[..., 0, None] * outputs[:, 0]
        for j in range(1, k):
            total = total + sym[..., j, None] * outputs[:, j]
        return total.reshape(steps, n, 2, states // 2)

    bm0, bm1 = branch(out0), branch(out1)
    metric = torch.full((n, states), -torch.inf, dtype=F64, device=dev)
    metric[:, 0] = 0.0
    choice = torch.empty((steps, n, 2, states // 2), dtype=torch.bool, device=dev)
    for step in range(steps):
        m0 = metric[:, None, 0::2] + bm0[step]
        m1 = metric[:, None, 1::2] + bm1[step]
        torch.gt(m1, m0, out=choice[step])
        metric = torch.maximum(m0, m1).reshape(n, states)
    flat_choice = choice.reshape(steps, n, states)
    state = torch.zeros(n, dtype=torch.int64, device=dev)
    bits = torch.empty((steps, n), dtype=torch.uint8, device=dev)
    for step in range(steps - 1, -1, -1):
        bits[step] = (state >> (MEMORY - 1)).to(torch.uint8)
        took1 = flat_choice[step].gather(1, state[:, None])[:, 0]
        state = torch.where(took1, pred1[state], pred0[state])
    return bits[:n_info].T.contiguous()
