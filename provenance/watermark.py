"""An invisible watermark that names the generation record, checked before release.

The mark carries the 8-byte record payload, protected by a CRC-32 (detection) and a rate-1/3
convolutional code decoded by soft Viterbi (correction): see :mod:`provenance.wm_codes`. The
method (:mod:`provenance.wm_spread`) is a tiled spread-spectrum pattern in the luma plane that
survives JPEG 50, half-size-and-back resizing, 10 % crops and brightness changes, and on photos
also copies kept at another size (the scale is read off the autocorrelation, :mod:`provenance.wm_scale`).

Marks are keyed by the deployment's secret keys (:mod:`provenance.watermark_keys`): the key lays
out the carriers and whitens the frame, so without it a mark can neither be read nor made, and a
payload copied from a real image and stamped with any other key names nothing here. Embedding
uses the ring's current key; decoding tries every key of the ring, so images released before a
rotation still verify, and the reading says which key matched.

A decode is *found* only when a candidate's CRC matches; otherwise it is *not found*, never a
guess. The decoder checks at most ``CANDIDATES_PER_SCALE`` (72: 8 sync peaks x 3x3 pixel
neighbourhoods) alignments per assumed scale and key, so for an unmarked image (random bits) the
chance of a false find is at most ``72 * 4 * K * 2**-32`` = 6.7e-8 per key (the original scale
plus at most three resize factors guessed from the autocorrelation, for each of the K keys):
see :func:`false_positive_bound`. Every key kept after a rotation adds that much again.

:meth:`Watermarker.embed_verified` climbs a ladder of strengths until the mark survives
:func:`simulate_redistribution` with margin to spare; :meth:`Watermarker.decode` needs no side
channel because every strength decodes the same way.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, StageError
from consentry.provenance.watermark_keys import WatermarkKey, WatermarkKeyring
from consentry.provenance.wm_codes import CODED_BITS, PAYLOAD_BYTES, FrameReading, PayloadCode
from consentry.provenance.wm_spread import (
    CANDIDATES_PER_SCALE,
    MAX_SCALE_GUESSES,
    MIN_DECODE_SIDE,
    Candidates,
    TiledSpreadSpectrum,
)

__all__ = [
    "ALGORITHM",
    "DEFAULT_STRENGTHS",
    "MIN_SIDE",
    "PAYLOAD_BYTES",
    "WatermarkMethod",
    "WatermarkNotDecodableError",
    "WatermarkReading",
    "Watermarker",
    "false_positive_bound",
    "simulate_redistribution",
]

MIN_SIDE = 256  # smallest image we mark: two tiles a side, so a crop still leaves a full period
ALGORITHM = "org.consentry.watermark.tiledss.v2"
# RMS luma change in grey levels: PSNR ~ 40.3, 38.6 and 36.1 dB.
DEFAULT_STRENGTHS: tuple[float, ...] = (2.5, 3.0, 4.0)
# After simulated redistribution the accepted decode must still agree this well with its
# codeword (1.0 = every soft value on the right side). Unmarked images decode at ~0.70 and
# Viterbi starts failing below ~0.85, so demanding 0.95 keeps headroom for harsher attacks
# (crops, JPEG 50) than the check itself; images that miss it get the next strength.
VERIFY_AGREEMENT = 0.95
FIRST_ROWS = 9  # a candidate batch's first rows (the strongest sync peak), decoded on their own


class WatermarkMethod(Protocol):
    """How coded bits are hidden and looked for; :class:`TiledSpreadSpectrum` is the default."""

    name: str

    def embed(self, rgb: NDArray[np.uint8], coded: NDArray[np.uint8], strength: float) -> NDArray[np.uint8]:
        """A marked copy of an HxWx3 uint8 image carrying ``coded`` (0/1 values)."""
        ...

    def candidates(self, rgb: NDArray[np.uint8]) -> Iterator[Candidates]:
        """Batches of soft values per coded bit (> 0 means 1), most likely placement first."""
        ...


# How a method is built for one key and a number of coded bits (TiledSpreadSpectrum's signature).
MethodFactory = Callable[[bytes, int], WatermarkMethod]


class BatchedMarks(Protocol):
    """Many images at once (:class:`provenance.wm_batch.TorchBatch`), same results as one by one."""

    def decode(self, images: Sequence[Image.Image]) -> list[WatermarkReading]: ...

    def embed_verified(
        self, images: Sequence[Image.Image], payload: bytes, attempts: int
    ) -> list[Image.Image]: ...


@dataclass(frozen=True, slots=True)
class WatermarkReading:
    """What a decode found.

    ``confidence`` is how well the soft values agree with the accepted codeword (1.0 = all on the
    right side; unmarked images score ~0.7 but never pass the CRC), 0.0 when nothing was found;
    it is not a probability. ``method`` names the method and, when not 1, the assumed scale;
    ``key_id`` names the deployment key the mark was made with.
    """

    found: bool
    payload: bytes | None
    confidence: float
    method: str | None = None
    key_id: str | None = None


class WatermarkNotDecodableError(StageError):
    """The mark did not survive simulated redistribution at any strength; nothing is released."""

    code: ClassVar[str] = codes.WATERMARK_FAILED


def false_positive_bound(n_scales: int = 1 + MAX_SCALE_GUESSES, n_keys: int = 1) -> float:
    """Chance that an unmarked image is read as marked, if its decoded bits are random: each
    checked alignment, at each scale and under each key, passes the CRC-32 with probability
    2**-32 (union bound). It is also the chance that a mark made with a key we do not hold
    (another deployment's, or the old public default) reads as one of ours."""
    return CANDIDATES_PER_SCALE * n_scales * n_keys * 2.0**-32


def simulate_redistribution(image: Image.Image) -> Image.Image:
    """What a platform typically does to an image: JPEG quality 75, then half size and back."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=75)
    buf.seek(0)
    with Image.open(buf) as decoded:
        rgb = decoded.convert("RGB")
    w, h = rgb.size
    half = rgb.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    return half.resize((w, h), Image.Resampling.BICUBIC)


@dataclass(frozen=True, slots=True)
class _KeyedReader:
    key_id: str
    method: WatermarkMethod
    code: PayloadCode


def _reading(reader: _KeyedReader, frame: FrameReading, scale: float) -> WatermarkReading:
    """The reading of a frame whose CRC matched, found at ``scale``."""
    name = reader.method.name if scale == 1.0 else f"{reader.method.name}@{scale:.3g}x"
    return WatermarkReading(True, frame.payload, round(frame.agreement, 4), name, reader.key_id)


class Watermarker:
    """Embed and decode the 8-byte generation-record payload under the deployment's keys.

    ``keys`` is the deployment's :class:`WatermarkKeyring` (or its keys, current first): the
    current key embeds, every key decodes. There is no default key on purpose: a key anyone can
    read from the source lets anyone stamp a real record's payload onto any image.
    ``strengths`` is the ladder :meth:`embed_verified` climbs, weakest (least visible) first.
    ``method`` builds the hiding method for one key (:class:`TiledSpreadSpectrum` by default).
    ``device`` is where :meth:`embed_verified_many` and :meth:`decode_many` run: ``cpu`` (numpy,
    one image at a time), ``cuda`` (the batched torch twin, :mod:`provenance.wm_batch`) or
    ``auto`` (CUDA when present, else numpy, which is faster than torch on a CPU: see
    bench/results/wm_torch_cpu.md). Torch is imported at the first batched call, never before.
    """

    algorithm = ALGORITHM

    def __init__(
        self,
        keys: WatermarkKeyring | Sequence[WatermarkKey],
        *,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        method: MethodFactory = TiledSpreadSpectrum,
        device: str = "cpu",
    ) -> None:
        if not strengths or any(s <= 0 for s in strengths):
            raise ValueError("a Watermarker needs at least one positive strength")
        self.device = device
        self._batched: BatchedMarks | bool | None = False  # False: not resolved yet
        self.strengths = tuple(float(s) for s in strengths)
        self.keyring = keys if isinstance(keys, WatermarkKeyring) else WatermarkKeyring(keys)
        self._readers = tuple(
            _KeyedReader(k.id, method(k.secret, CODED_BITS), PayloadCode(k.secret)) for k in self.keyring.keys
        )
        # The current key's method and code: what embedding uses.
        self.method: WatermarkMethod = self._readers[0].method
        self.code: PayloadCode = self._readers[0].code

    @classmethod
    def with_key(cls, secret: bytes, *, strengths: Sequence[float] = DEFAULT_STRENGTHS) -> Watermarker:
        """A watermarker with one in-memory key (tests, benchmarks, one-off tools)."""
        return cls(WatermarkKeyring.from_secrets(secret), strengths=strengths)

    @property
    def current_key_id(self) -> str:
        """The id of the key new marks are made with."""
        return self._readers[0].key_id

    def false_positive_bound(self) -> float:
        """:func:`false_positive_bound` for this watermarker: every key it tries counts."""
        return false_positive_bound(n_keys=len(self._readers))

    def _coded(self, payload: bytes) -> NDArray[np.uint8]:
        if not isinstance(payload, bytes | bytearray) or len(payload) != PAYLOAD_BYTES:
            raise BadInputError(
                f"a watermark payload is exactly {PAYLOAD_BYTES} bytes", code=codes.WATERMARK_PAYLOAD_INVALID
            )
        return self.code.encode(bytes(payload))

    def embed(self, image: Image.Image, payload: bytes, *, strength: int = 0) -> Image.Image:
        """A marked copy of ``image`` (RGB, or RGBA with the alpha kept) at ladder rung ``strength``."""
        w, h = image.size
        if w < MIN_SIDE or h < MIN_SIDE:
            raise BadInputError(
                f"images under {MIN_SIDE}x{MIN_SIDE} cannot carry the watermark (got {w}x{h})",
                code=codes.WATERMARK_IMAGE_TOO_SMALL,
            )
        coded = self._coded(payload)
        rung = self.strengths[min(max(strength, 0), len(self.strengths) - 1)]
        marked = Image.fromarray(self.method.embed(np.asarray(image.convert("RGB")), coded, rung))
        if image.mode in ("RGBA", "LA"):
            marked.putalpha(image.getchannel("A"))
        return marked

    def decode(self, image: Image.Image) -> WatermarkReading:
        """Look for the mark under each key, current first; the first candidate whose CRC
        matches is the answer.

        Every key's first candidate batch (the original scale: one fold and two small FFTs)
        is tried before any key's scale search (~80 ms on a 256 px image): an image marked
        under an older key then costs a few milliseconds per newer key, not a failed search.
        """
        w, h = image.size
        if min(w, h) < MIN_DECODE_SIDE:
            return WatermarkReading(found=False, payload=None, confidence=0.0)
        rgb = np.asarray(image.convert("RGB"))
        searches = [(reader, iter(reader.method.candidates(rgb))) for reader in self._readers]
        for reader, batches in searches:
            first = next(batches, None)
            reading = self._first_found(reader, [first] if first is not None else [])
            if reading is not None:
                return reading
        for reader, batches in searches:
            reading = self._first_found(reader, batches)
            if reading is not None:
                return reading
        return WatermarkReading(found=False, payload=None, confidence=0.0)

    @staticmethod
    def _first_found(reader: _KeyedReader, batches: Iterable[Candidates]) -> WatermarkReading | None:
        for batch in batches:
            # The strongest sync peak's neighbourhood first: on a marked image it almost always
            # holds the mark, and a 9-row Viterbi batch is a fraction of the full one.
            for rows in (slice(0, FIRST_ROWS), slice(FIRST_ROWS, None)):
                for frame in reader.code.decode(batch.soft[rows]) if len(batch.soft[rows]) else ():
                    if frame.payload is not None:
                        return _reading(reader, frame, batch.scale)
        return None

    def _batch(self) -> BatchedMarks | None:
        """The batched torch twin for :attr:`device`, built at first use; None means numpy."""
        if self._batched is False and self.device == "cpu":
            self._batched = None  # numpy: torch is not imported at all
        elif self._batched is False:
            from consentry.provenance.wm_batch import batched_for

            self._batched = batched_for(self, self.device)
        return self._batched if not isinstance(self._batched, bool) else None

    def decode_many(self, images: Sequence[Image.Image]) -> list[WatermarkReading]:
        """:meth:`decode` of each image; batched on the GPU when :attr:`device` says so."""
        batch = self._batch()
        return batch.decode(images) if batch is not None else [self.decode(im) for im in images]

    def embed_verified_many(
        self, images: Sequence[Image.Image], payload: bytes, attempts: int = 3
    ) -> list[Image.Image]:
        """:meth:`embed_verified` of each image (all or nothing); batched on the GPU when
        :attr:`device` says so (then a marked pixel may differ by one grey level from numpy's)."""
        batch = self._batch()
        if batch is None:
            return [self.embed_verified(im, payload, attempts) for im in images]
        return batch.embed_verified(images, payload, attempts)

    def embed_verified(self, image: Image.Image, payload: bytes, attempts: int = 3) -> Image.Image:
        """Embed, then prove the payload still decodes after :func:`simulate_redistribution`
        with agreement >= ``VERIFY_AGREEMENT``, stepping up the ladder (at most ``attempts``
        rungs) until it does.

        Raises :class:`WatermarkNotDecodableError` when no rung survives: the gate must never
        release an image whose mark would not.
        """
        rungs = max(1, min(attempts, len(self.strengths)))
        for strength in range(rungs):
            marked = self.embed(image, payload, strength=strength)
            survived = self.decode(simulate_redistribution(marked))
            if (
                survived.found
                and survived.payload == payload
                and survived.confidence >= VERIFY_AGREEMENT
                and survived.key_id == self.current_key_id
                and self.decode(marked).payload == payload
            ):
                return marked
        raise WatermarkNotDecodableError(
            f"watermark {payload.hex()} did not survive JPEG 75 + resize after {rungs} attempt(s)",
            strengths=[self.strengths[i] for i in range(rungs)],
        )
