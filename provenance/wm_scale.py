"""Find the scale of a resized copy of a tiled watermark from the image's autocorrelation.

A pattern repeated every ``tile`` pixels makes the image correlate with itself at shifts that
are multiples of the period; after a resize by ``s`` the period is ``s * tile``. The photo's own
autocorrelation dies off within a few pixels once it is high-passed and its spectrum whitened,
so the far peaks on the axes give the period: on test photos resized by 0.5-2x the scale
comes out within ~1e-3, enough to fold the copy back onto the tile grid. Noise-like images
(untrained generators, synthetic textures) have far peaks of their own and are often missed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

SCALE_RANGE = (0.45, 2.2)  # resizes the decoder looks for
_MAX_SIDE = 1024  # a central crop this large holds enough periods and keeps the FFT cheap
_WHITEN = 9  # bins averaged for the local spectral level the power is divided by
_CLIP = 4.0  # whitened power is capped here (see scale_guesses)


def _fast_len(n: int) -> int:
    """The smallest 2-3-5-smooth size >= n: FFTs of such sizes are fast, of primes slow."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _peak_near(profile: NDArray[np.float64], at: float) -> float:
    """The sub-pixel position of the largest value within 2 lags of ``at`` (parabolic fit)."""
    i = min(max(round(at), 3), len(profile) - 4)
    i = i - 2 + int(np.argmax(profile[i - 2 : i + 3]))
    a, b, c = profile[i - 1], profile[i], profile[i + 1]
    curvature = a - 2.0 * b + c
    return i + (0.5 * (a - c) / curvature if curvature < 0 else 0.0)


def scale_guesses(y: NDArray[np.float32], tile: int, n: int = 2) -> list[float]:
    """Likely resize factors, best first.

    Each candidate period is scored by the autocorrelation summed over its multiples (the
    "harmonic sum"), less the values halfway between: the true period collects every peak,
    half of it only every other one, twice it only every other one too. The winner is refined
    on its highest multiple in range, which divides the sub-pixel error by that multiple.
    """
    import cv2  # imported here: commands that never touch pixels start faster

    h, w = y.shape
    top, left = max(0, (h - _MAX_SIDE) // 2), max(0, (w - _MAX_SIDE) // 2)
    y = y[top : top + _MAX_SIDE, left : left + _MAX_SIDE]
    high = y - cv2.GaussianBlur(y, (0, 0), 1.5)
    shape = (_fast_len(high.shape[0]), _fast_len(high.shape[1]))
    power = np.abs(np.fft.rfft2(high - high.mean(), s=shape)) ** 2
    # Whiten: a tiled mark is a lattice of narrow spectral lines, the photo a broad smooth
    # spectrum; dividing by the local mean power keeps the lines and flattens the photo.
    ratio = power / (cv2.blur(power.astype(np.float32), (_WHITEN, _WHITEN)) + 1e-6)
    # Clipped: the mark's lines are many and faint; a few towering ones (JPEG's or a
    # generator's 8-pixel grid) would otherwise plant false periods at their multiples.
    ac = np.fft.irfft2(np.minimum(ratio, _CLIP), s=shape)
    reach = min(y.shape) // 2  # lags past half the image compare too few pixels
    profile = ac[:reach, 0] + ac[0, :reach]
    lo, hi = int(tile * SCALE_RANGE[0]), min(int(tile * SCALE_RANGE[1]), reach - 3)
    if hi <= lo:
        return []
    profile = (profile - np.median(profile[lo:])) / (np.std(profile[lo:]) + 1e-12)
    periods = np.arange(lo, hi + 1, dtype=np.float64)
    score = np.zeros_like(periods)
    lags = np.arange(reach)
    for k in range(1, 6):
        valid = k * periods < reach - 3
        # Minus the value half a period earlier: periodic structure of the photo itself (JPEG's
        # 8x8 blocks, a generator's 8-pixel upsampling) adds to both and cancels out.
        score[valid] += np.interp(k * periods[valid], lags, profile)
        score[valid] -= np.interp((k - 0.5) * periods[valid], lags, profile)
    guesses: list[float] = []
    for i in np.argsort(-score):
        p = periods[i]
        if any(abs(p - tile * g) < 3 for g in guesses):
            continue
        k = max(1, int((reach - 4) // p))  # the highest multiple fully in range
        guesses.append(_peak_near(profile, k * p) / (k * tile))
        if len(guesses) == n:
            break
    return guesses


def rescale(y: NDArray[np.float32], scale: float) -> NDArray[np.float32]:
    """Undo a resize by ``scale``. Given ``fx``/``fy`` and no target size, OpenCV maps with the
    exact factor; a rounded target size would be off by up to half a pixel over the image."""
    import cv2  # imported here: commands that never touch pixels start faster

    flags = cv2.INTER_CUBIC if scale < 1.0 else cv2.INTER_AREA
    # cv2's stubs type the result as any integer or float array; for float32 input it is float32,
    # so asarray only narrows the type (it returns the same array, no copy).
    out = cv2.resize(y, None, fx=1.0 / scale, fy=1.0 / scale, interpolation=flags)
    return np.asarray(out, dtype=np.float32)


Sync = Callable[[NDArray[np.float32]], tuple[NDArray[np.complex128], NDArray[np.float64]]]


def best_scales(
    y: NDArray[np.float32], tile: int, sync: Sync, keep: int, min_side: int
) -> list[tuple[float, NDArray[np.complex128], NDArray[np.float64]]]:
    """The ``keep`` most promising resize factors, with their sync spectrum and correlation.

    The autocorrelation's guesses can land on a half or a third of the true period (a
    copy that was enlarged puts few multiples in range), so each guess also stands for its
    double and triple; half size, the commonest resize, is always a candidate (a small copy
    holds too few periods for the autocorrelation). The sync peak's height (cheap: one fold and
    two small FFTs) ranks them and only the best ``keep`` go on to the Viterbi decoder.
    """
    scales: list[float] = [0.5]
    for guess in scale_guesses(y, tile):
        for s in (guess, 2 * guess, 3 * guess):
            if SCALE_RANGE[0] <= s <= SCALE_RANGE[1] and all(abs(s / o - 1) > 2e-3 for o in [1.0, *scales]):
                scales.append(s)
    ranked = []
    for s in scales:
        plane = rescale(y, s)
        if min(plane.shape) >= min_side:
            spectrum, corr = sync(plane)
            ranked.append(
                ((float(corr.max()) - float(corr.mean())) / (float(corr.std()) + 1e-12), s, spectrum, corr)
            )
    ranked.sort(key=lambda r: -r[0])
    return [(s, spectrum, corr) for _, s, spectrum, corr in ranked[:keep]]
