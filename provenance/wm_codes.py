"""Error correction and detection for the watermark payload.

The channel (measured in ``bench/watermark_robustness.py``) hands back one *soft* value per coded
bit whose noise is close to Gaussian: host-image interference plus what JPEG, resizing and
cropping leave. Soft-decision Viterbi decoding of a convolutional code is the textbook fit for
that channel; a block code decoded from hard bits would throw the reliabilities away.

Frame: 8-byte payload + CRC-32 (96 bits), XOR-whitened with a keyed stream so that degenerate
decodes (all zeros, all ones) are not codewords, then a rate-1/3, constraint-length-7
convolutional code (generators 133, 171, 165 octal) terminated with 6 zero tail bits: 306 coded
bits. The CRC is the *detection* half: a decode is accepted only when it matches, so for an
unmarked image (random bits) each decode attempt is accepted with probability 2**-32.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

PAYLOAD_BYTES = 8
CRC_BITS = 32
INFO_BITS = PAYLOAD_BYTES * 8 + CRC_BITS  # 96
MEMORY = 6  # constraint length 7
GENERATORS = (0o133, 0o171, 0o165)
CODED_BITS = (INFO_BITS + MEMORY) * len(GENERATORS)  # 306
_STATES = 1 << MEMORY
_DOMAIN = b"consentry-wm2"  # keeps our CRC apart from any other CRC-32 framed 64-bit mark


def _trellis() -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """For every next state: its two predecessor states and the +-1 outputs of both branches.

    The register holds the new bit at position 6 and the previous six bits below it; the state
    is the register shifted right once (the newest six bits). Predecessors of state ``ns`` are
    ``(ns << 1) & 63`` and that plus one, both entered with input bit ``ns >> 5``. Outputs are
    +1 for a coded 0 and -1 for a coded 1.
    """
    ns = np.arange(_STATES, dtype=np.intp)
    pred0 = (ns << 1) & (_STATES - 1)
    pred1 = pred0 | 1
    bit = ns >> (MEMORY - 1)
    outs = []
    for pred in (pred0, pred1):
        reg = (bit << MEMORY) | pred
        parity = [np.array([bin(int(r) & g).count("1") & 1 for r in reg]) for g in GENERATORS]
        outs.append(1.0 - 2.0 * np.stack(parity, axis=1))
    return pred0, pred1, outs[0], outs[1]


_PRED0, _PRED1, _OUT0, _OUT1 = _trellis()


def conv_encode(bits: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Encode info bits (last axis) followed by 6 zero tail bits; rows are encoded together.

    Output ``k`` at time ``t`` is the parity of generator ``k`` against the register, whose bit
    ``6 - i`` holds the input from ``i`` steps ago: XOR of shifted copies of the input. (Plain
    numpy on purpose: a BLAS matmul here pays thread start-up on every call.)
    """
    bits = np.asarray(bits, dtype=np.uint8)
    steps = bits.shape[-1] + MEMORY
    padded = np.zeros((*bits.shape[:-1], steps), dtype=np.uint8)
    padded[..., : bits.shape[-1]] = bits
    out = np.zeros((*bits.shape[:-1], steps, len(GENERATORS)), dtype=np.uint8)
    for k, gen in enumerate(GENERATORS):
        for i in range(MEMORY + 1):
            if (gen >> (MEMORY - i)) & 1:
                out[..., i:, k] ^= padded[..., : steps - i]
    return out.reshape(*bits.shape[:-1], steps * len(GENERATORS))


def _branch_metrics(sym: NDArray[np.float64], outputs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Correlation of the soft values ``sym`` (..., outputs) with each state's +-1 outputs."""
    total = sym[..., 0, None] * outputs[:, 0]
    for k in range(1, len(GENERATORS)):
        total = total + sym[..., k, None] * outputs[:, k]
    return total


def viterbi_decode(soft: NDArray[np.float64], n_info: int = INFO_BITS) -> NDArray[np.uint8]:
    """Maximum-likelihood info bits for each row of soft values (> 0: the coded bit is probably 1).

    The branch metric is the correlation of the soft values with the branch's +-1 outputs, which
    is the Gaussian-channel likelihood up to a scale: the soft values need no calibration. Rows
    are decoded together, so many candidate alignments cost little more than one.
    """
    soft = np.atleast_2d(np.asarray(soft, dtype=np.float64))
    n, steps = soft.shape[0], n_info + MEMORY
    sym = -soft[:, : steps * len(GENERATORS)].reshape(n, steps, len(GENERATORS))
    sym = np.ascontiguousarray(np.moveaxis(sym, 1, 0))  # (steps, n, outputs)
    # Branch metrics (steps, n, states), written out rather than as a tiny BLAS matmul.
    # Predecessors of states s and s + 32 are the same pair (2s, 2s + 1), so the add-compare-
    # select runs on views, shaped (n, 2 halves, 32), with no gathers.
    bm0 = _branch_metrics(sym, _OUT0).reshape(steps, n, 2, _STATES // 2)
    bm1 = _branch_metrics(sym, _OUT1).reshape(steps, n, 2, _STATES // 2)
    metric = np.full((n, _STATES), -np.inf)
    metric[:, 0] = 0.0  # the encoder starts in state 0
    choice: NDArray[np.bool_] = np.empty((steps, n, 2, _STATES // 2), dtype=bool)
    for t in range(steps):
        m0 = metric[:, None, 0::2] + bm0[t]
        m1 = metric[:, None, 1::2] + bm1[t]
        np.greater(m1, m0, out=choice[t])
        metric = np.maximum(m0, m1).reshape(n, _STATES)
    choice = choice.reshape(steps, n, _STATES)
    state = np.zeros(n, dtype=np.intp)  # the tail bits drove the encoder back to state 0
    rows = np.arange(n)
    bits = np.empty((n, steps), dtype=np.uint8)
    for t in range(steps - 1, -1, -1):
        bits[:, t] = state >> (MEMORY - 1)
        state = np.where(choice[t, rows, state], _PRED1[state], _PRED0[state])
    return bits[:, :n_info]


@dataclass(frozen=True, slots=True)
class FrameReading:
    """One decoded candidate.

    ``payload`` is set only when the CRC matched. ``raw`` is the decoded payload field whatever
    the CRC says (for measuring bit accuracy). ``agreement`` is how well the soft values agree
    with the re-encoded codeword: 1.0 = every soft value on the right side, ~0.7 for noise
    (Viterbi always finds *some* nearby codeword).
    """

    payload: bytes | None
    raw: bytes
    agreement: float


class PayloadCode:
    """Payload <-> coded bits, keyed: another key whitens differently and reads nothing."""

    def __init__(self, key: bytes) -> None:
        stream = hashlib.sha256(b"whitening:" + key).digest()[: INFO_BITS // 8]
        self._mask = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))

    @staticmethod
    def _crc(payload: bytes) -> bytes:
        return zlib.crc32(_DOMAIN + payload).to_bytes(4, "big")

    def encode(self, payload: bytes) -> NDArray[np.uint8]:
        """The 306 coded bits (0/1) for an 8-byte payload."""
        frame = np.frombuffer(payload + self._crc(payload), dtype=np.uint8)
        return conv_encode(np.unpackbits(frame) ^ self._mask)

    def decode(self, soft: NDArray[np.floating[Any]]) -> list[FrameReading]:
        """Viterbi-decode each row of ``soft`` (one value per coded bit, > 0 meaning 1) and
        check each CRC. Every row is one attempt at 2**-32 odds of a false match."""
        values = np.atleast_2d(np.asarray(soft, dtype=np.float64))
        return self.frames(viterbi_decode(values, INFO_BITS), values)

    def frames(self, info: NDArray[np.uint8], values: NDArray[np.float64]) -> list[FrameReading]:
        """The readings of rows already Viterbi-decoded to ``info`` bits (N, 96) from the soft
        ``values`` (N, 306): the CRC check and the codeword agreement of :meth:`decode`."""
        signs = 2.0 * conv_encode(info).astype(np.float64) - 1.0
        agreement = np.sum(values * signs, axis=1) / np.maximum(np.sum(np.abs(values), axis=1), 1e-12)
        readings = []
        for row, agree in zip(np.packbits(info ^ self._mask, axis=1), agreement, strict=True):
            data = row.tobytes()
            payload, crc = data[:PAYLOAD_BYTES], data[PAYLOAD_BYTES:]
            ok = self._crc(payload) == crc
            readings.append(FrameReading(payload if ok else None, payload, float(agree)))
        return readings
