"""The payload code corrects what it should, detects what it cannot correct, and the spread-
spectrum method finds a crop's offset."""

from __future__ import annotations

import numpy as np
from PIL import Image

from consentry.provenance.wm_codes import (
    CODED_BITS,
    GENERATORS,
    INFO_BITS,
    MEMORY,
    PayloadCode,
    conv_encode,
    viterbi_decode,
)
from consentry.provenance.wm_spread import TILE, TiledSpreadSpectrum


def _reference_encode(bits: np.ndarray) -> np.ndarray:
    """A plain shift register, written independently of the vectorised encoder."""
    register, out = [0] * (MEMORY + 1), []
    for b in [*bits.tolist(), *[0] * MEMORY]:
        register = [b, *register[:-1]]  # register[i] = input from i steps ago
        for g in GENERATORS:
            taps = [(g >> (MEMORY - i)) & 1 for i in range(MEMORY + 1)]
            out.append(sum(t * r for t, r in zip(taps, register, strict=True)) % 2)
    return np.array(out, dtype=np.uint8)


def test_encoder_matches_a_plain_shift_register() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        bits = rng.integers(0, 2, INFO_BITS).astype(np.uint8)
        assert np.array_equal(conv_encode(bits), _reference_encode(bits))
    assert conv_encode(np.zeros(INFO_BITS, np.uint8)).sum() == 0  # linear: zero in, zero out


def test_viterbi_corrects_any_seven_hard_errors() -> None:
    """The K=7 rate-1/3 code has free distance 15, so 7 flipped bits are always corrected."""
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, (40, INFO_BITS)).astype(np.uint8)
    soft = 2.0 * conv_encode(bits).astype(np.float64) - 1.0
    for row in soft:
        row[rng.choice(CODED_BITS, 7, replace=False)] *= -1.0
    assert np.array_equal(viterbi_decode(soft), bits)


def test_soft_decoding_at_unit_signal_to_noise() -> None:
    """Gaussian noise as strong as the signal: the raw bits are 16 % wrong, frames come back."""
    rng = np.random.default_rng(2)
    code = PayloadCode(b"k")
    payloads = [rng.bytes(8) for _ in range(60)]
    clean = np.stack([2.0 * code.encode(p) - 1.0 for p in payloads])
    noisy = 1.2 * clean + rng.normal(0.0, 1.0, clean.shape)
    assert np.mean((noisy > 0) != (clean > 0)) > 0.1
    readings = code.decode(noisy)
    assert sum(r.payload == p for r, p in zip(readings, payloads, strict=True)) >= 58
    assert all(r.agreement > 0.8 for r in readings)


def test_noise_never_passes_the_crc() -> None:
    rng = np.random.default_rng(3)
    readings = PayloadCode(b"k").decode(rng.normal(0.0, 1.0, (400, CODED_BITS)))
    assert all(r.payload is None for r in readings)
    assert all(0.5 < r.agreement < 0.85 for r in readings)  # Viterbi always finds *a* codeword
    assert PayloadCode(b"k").decode(np.zeros(CODED_BITS))[0].payload is None


def test_the_frame_is_keyed() -> None:
    payload = bytes(range(8))
    mine, theirs = PayloadCode(b"mine"), PayloadCode(b"theirs")
    assert not np.array_equal(mine.encode(payload), theirs.encode(payload))
    soft = 2.0 * theirs.encode(payload) - 1.0
    assert theirs.decode(soft)[0].payload == payload
    assert mine.decode(soft)[0].payload is None


def test_crop_offset_is_found_as_a_cyclic_shift() -> None:
    rng = np.random.default_rng(4)
    small = Image.fromarray(np.uint8(rng.integers(0, 256, (128, 128, 3))))
    rgb = np.asarray(small.resize((512, 512), Image.Resampling.BICUBIC))
    method = TiledSpreadSpectrum(b"k", CODED_BITS)
    coded = PayloadCode(b"k").encode(bytes(8))
    marked = method.embed(rgb, coded, 2.5)
    top, left = 81, 37
    batch = next(iter(method.candidates(marked[top:, left:])))
    assert tuple(batch.shifts[0]) == ((-top) % TILE, (-left) % TILE)
    assert batch.sync_z[0] > 8.0 and batch.scale == 1.0
    assert np.mean((batch.soft[0] > 0) == coded.astype(bool)) > 0.97
