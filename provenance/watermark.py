"""An invisible watermark that names the generation record, checked before release.

The mark carries 80 bits: the 8-byte record payload and a CRC-16 over it, XOR-whitened with a
fixed key stream so that the degenerate decodes of unmarked images (all zeros, all ones, a flat
colour) are not valid codewords. A decode is *found* only when the CRC matches and the per-bit
votes agree strongly; otherwise it is *not found*, never a guess.

Embedding methods are swappable (:class:`WatermarkMethod`). The default ladder runs
invisible-watermark's dwtDctSvd block coder at increasing strength: :meth:`Watermarker.embed_verified`
climbs it until the mark survives :func:`simulate_redistribution`, and :meth:`Watermarker.decode`
tries every rung, so the strength used needs no side channel.
"""

from __future__ import annotations

import binascii
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pywt
from imwatermark.dwtDctSvd import EmbedDwtDctSvd
from numpy.typing import NDArray
from PIL import Image

from policies.decision import WATERMARK_FAILED
from policies.errors import BadInputError, StageError

PAYLOAD_BYTES = 8
N_BITS = (PAYLOAD_BYTES + 2) * 8  # payload + CRC-16
MIN_SIDE = 256  # invisible-watermark refuses images under 256x256 pixels
ALGORITHM = "org.consentry.watermark.dwtdctsvd.v1"

# RGB -> YUV as OpenCV defines it (BT.601 luma, chroma offset by 128), in floating point.
_RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]], dtype=np.float64
)
_U_TO_RGB = np.linalg.inv(_RGB_TO_YUV)[:, 1]  # how a change of U moves R, G and B


class WatermarkMethod(Protocol):
    """One way to hide bits in an RGB image; swap in a more robust one without touching callers."""

    @property
    def name(self) -> str: ...

    def embed(self, rgb: NDArray[np.uint8], bits: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """Return a marked copy of an HxWx3 uint8 image carrying ``bits`` (0/1 values)."""
        ...

    def decode(self, rgb: NDArray[np.uint8], n_bits: int) -> NDArray[np.float64]:
        """Soft bits: for each bit, the share of evidence that it is 1 (0.0 to 1.0)."""
        ...


class DwtDctSvd:
    """invisible-watermark's dwtDctSvd coder on the U (blue-difference chroma) plane.

    The library's own ``WatermarkEncoder`` converts to YUV in uint8 and writes the inverse
    wavelet transform back into that uint8 array, truncating rather than rounding; measured on
    the test photos that loses the mark to JPEG 75 + resize in almost every 256² and 512² image.
    Here the colour conversion and wavelet step run in float64 and only the library's block
    coder (quantising the top singular value of each 4x4 DCT block to ``scale``) is reused.
    """

    def __init__(self, scale: int = 56, block: int = 4) -> None:
        self.scale = scale
        self.block = block

    @property
    def name(self) -> str:
        return f"dwtDctSvd(scale={self.scale})"

    def _coder(self, bits: Sequence[int], n_bits: int) -> EmbedDwtDctSvd:
        return EmbedDwtDctSvd(list(bits), wmLen=n_bits, scales=[0, self.scale, 0], block=self.block)

    @staticmethod
    def _u_plane(rgb: NDArray[np.uint8]) -> NDArray[np.float64]:
        h, w = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4  # the wavelet needs even sizes
        return rgb[:h, :w].astype(np.float64) @ _RGB_TO_YUV[1] + 128.0

    def embed(self, rgb: NDArray[np.uint8], bits: NDArray[np.uint8]) -> NDArray[np.uint8]:
        plane = self._u_plane(rgb)
        approx, details = pywt.dwt2(plane, "haar")
        self._coder([int(b) for b in bits], len(bits)).encode_frame(approx, self.scale)
        delta = pywt.idwt2((approx, details), "haar") - plane
        out = rgb.astype(np.float64)
        out[: plane.shape[0], : plane.shape[1]] += delta[..., None] * _U_TO_RGB
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def decode(self, rgb: NDArray[np.uint8], n_bits: int) -> NDArray[np.float64]:
        approx, _ = pywt.dwt2(self._u_plane(rgb), "haar")
        votes = self._coder([], n_bits).decode_frame(approx, self.scale, [[] for _ in range(n_bits)])
        return np.array([np.mean(v) if v else 0.5 for v in votes], dtype=np.float64)


DEFAULT_LADDER: tuple[int, ...] = (56, 72, 96)


@dataclass(frozen=True, slots=True)
class WatermarkReading:
    """What a decode found.

    ``confidence`` is the mean per-bit vote agreement (|2p - 1|) of the accepted decode, 0.0 when
    nothing was found; it is not a probability.
    """

    found: bool
    payload: bytes | None
    confidence: float
    method: str | None = None


class WatermarkNotDecodableError(StageError):
    """The mark did not survive simulated redistribution at any strength; nothing is released."""

    code = WATERMARK_FAILED


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


def _crc16(payload: bytes) -> bytes:
    # CRC-16/CCITT-FALSE over a domain tag + payload; the tag keeps our codewords apart from any
    # other CRC-protected 64-bit mark embedded with the same coder.
    return binascii.crc_hqx(b"consentry-wm1" + payload, 0xFFFF).to_bytes(2, "big")


class Watermarker:
    """Embed and decode the 8-byte generation-record payload.

    ``methods`` is a ladder from weakest (least visible) to strongest; ``min_confidence`` is the
    vote agreement a CRC-valid decode must also reach (unmarked photos stay below ~0.6, marked
    ones after JPEG 75 + resize above ~0.8).
    """

    algorithm = ALGORITHM

    def __init__(
        self,
        methods: Sequence[WatermarkMethod] | None = None,
        *,
        min_confidence: float = 0.65,
        key: bytes = b"consentry.watermark.v1",
    ) -> None:
        self.methods: tuple[WatermarkMethod, ...] = tuple(
            methods if methods is not None else (DwtDctSvd(s) for s in DEFAULT_LADDER)
        )
        if not self.methods:
            raise ValueError("a Watermarker needs at least one method")
        self.min_confidence = min_confidence
        stream = hashlib.sha256(key).digest()[: N_BITS // 8]
        self._mask = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))

    def _codeword(self, payload: bytes) -> NDArray[np.uint8]:
        if not isinstance(payload, bytes | bytearray) or len(payload) != PAYLOAD_BYTES:
            raise BadInputError(
                f"a watermark payload is exactly {PAYLOAD_BYTES} bytes", code="watermark.payload_invalid"
            )
        data = bytes(payload) + _crc16(bytes(payload))
        return np.unpackbits(np.frombuffer(data, dtype=np.uint8)) ^ self._mask

    def _payload(self, bits: NDArray[np.uint8]) -> bytes | None:
        data = np.packbits(bits ^ self._mask).tobytes()
        payload, crc = data[:PAYLOAD_BYTES], data[PAYLOAD_BYTES:]
        return payload if _crc16(payload) == crc else None

    def embed(self, image: Image.Image, payload: bytes, *, strength: int = 0) -> Image.Image:
        """A marked copy of ``image`` (RGB, or RGBA with the alpha kept) at ladder rung ``strength``."""
        w, h = image.size
        if w < MIN_SIDE or h < MIN_SIDE:
            raise BadInputError(
                f"images under {MIN_SIDE}x{MIN_SIDE} cannot carry the watermark (got {w}x{h})",
                code="watermark.image_too_small",
            )
        bits = self._codeword(payload)
        method = self.methods[min(strength, len(self.methods) - 1)]
        marked = Image.fromarray(method.embed(np.asarray(image.convert("RGB")), bits))
        if image.mode in ("RGBA", "LA"):
            marked.putalpha(image.getchannel("A"))
        return marked

    def decode(self, image: Image.Image) -> WatermarkReading:
        """Look for a mark with every method; images too small to carry one read as not found."""
        w, h = image.size
        if w < MIN_SIDE or h < MIN_SIDE:
            return WatermarkReading(found=False, payload=None, confidence=0.0)
        rgb = np.asarray(image.convert("RGB"))
        for method in self.methods:
            soft = method.decode(rgb, N_BITS)
            confidence = float(np.mean(np.abs(2.0 * soft - 1.0)))
            payload = self._payload((soft > 0.5).astype(np.uint8))
            if payload is not None and confidence >= self.min_confidence:
                return WatermarkReading(True, payload, round(confidence, 4), method.name)
        return WatermarkReading(found=False, payload=None, confidence=0.0)

    def embed_verified(self, image: Image.Image, payload: bytes, attempts: int = 3) -> Image.Image:
        """Embed, then prove the payload still decodes after :func:`simulate_redistribution`,
        stepping up the ladder (at most ``attempts`` rungs) until it does.

        Raises :class:`WatermarkNotDecodableError` when no rung survives: the gate must never
        release an image whose mark would not.
        """
        rungs = max(1, min(attempts, len(self.methods)))
        for strength in range(rungs):
            marked = self.embed(image, payload, strength=strength)
            survived = self.decode(simulate_redistribution(marked))
            if survived.found and survived.payload == payload and self.decode(marked).payload == payload:
                return marked
        raise WatermarkNotDecodableError(
            f"watermark {payload.hex()} did not survive JPEG 75 + resize after {rungs} attempt(s)",
            strengths=[self.methods[i].name for i in range(rungs)],
        )
