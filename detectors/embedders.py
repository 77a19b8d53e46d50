"""Face embedders: aligned face chips in, identity vectors out.

An embedder also says which chip it wants (``chip_size`` pixels square, ``chip_padding`` in
dlib's ``get_face_chip`` sense) so the aligner cuts chips to match the network it feeds.
Embedding is blocking CPU/GPU work; async callers run it in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from consentry.detectors.devices import resolve_device
from consentry.detectors.dlib_resnet import EMBEDDING_DIM, DlibResNet, load_dlib_resnet
from consentry.policies import codes
from consentry.policies.errors import BadInputError, StageError


@runtime_checkable
class Embedder(Protocol):
    """Maps aligned RGB face chips to L2-normalised vectors (cosine = dot product).

    The four descriptors are read-only, so a class constant, an instance attribute or a
    property all satisfy them.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def chip_size(self) -> int: ...

    @property
    def chip_padding(self) -> float: ...

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, chip_size, chip_size, 3)`` RGB chips -> float32 ``(N, dim)``, unit norm."""
        ...


class DlibResNetEmbedder:
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

    Same numbers as ``dlib.face_recognition_model_v1.compute_face_descriptor`` on the same
    chips, but batched and GPU-capable. Chips must be cut the way ``dlib.get_face_chip`` does
    (5-point similarity alignment, 150 px, padding 0.25).
    """

    name: str = "dlib-resnet-v1"
    dim: int = EMBEDDING_DIM
    chip_size: int = 150
    chip_padding: float = 0.25  # dlib.get_face_chip's default

    def __init__(
        self,
        weights: Path | None = None,
        device: str = "auto",
        batch_size: int = 32,
        model: DlibResNet | None = None,
    ) -> None:
        """Load ``weights`` (default: face_recognition_models' copy) unless ``model`` is given."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._model = (model or load_dlib_resnet(weights)).to(self.device).eval()

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Unit-length descriptors; cosine similarity is their dot product."""
        raw = self.embed_raw(chips)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norms, 1e-12)).astype(np.float32)

    def embed_raw(self, chips: np.ndarray) -> np.ndarray:
        """dlib's own (unnormalised) descriptors, float32 ``(N, 128)``."""
        self._check(chips)
        out = np.empty((len(chips), self.dim), dtype=np.float32)
        try:
            with torch.inference_mode():
                for start in range(0, len(chips), self.batch_size):
                    batch = torch.from_numpy(chips[start : start + self.batch_size])
                    result = self._model(batch.to(self.device))
                    out[start : start + len(batch)] = result.float().cpu().numpy()
        except RuntimeError as exc:  # torch reports OOM and kernel failures this way
            raise StageError(f"face embedding failed: {exc}", code=codes.FACE_EMBEDDING_FAILED) from exc
        return out

    def _check(self, chips: np.ndarray) -> None:
        size = self.chip_size
        if (
            not isinstance(chips, np.ndarray)
            or chips.dtype != np.uint8
            or chips.ndim != 4
            or chips.shape[1:] != (size, size, 3)
        ):
            got = f"{chips.dtype} {chips.shape}" if isinstance(chips, np.ndarray) else type(chips)
            raise BadInputError(
                f"face chips must be uint8 arrays of shape (N, {size}, {size}, 3); got {got}",
                code=codes.FACE_CHIP_SHAPE,
            )
