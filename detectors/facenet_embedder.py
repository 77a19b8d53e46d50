"""Second embedding backend: facenet-pytorch's InceptionResnetV1 with weights given by path.

facenet-pytorch would download its VGGFace2 weights from GitHub; Consentry never downloads at
run time, so the operator supplies a state-dict file (``facenet_weights`` in the config).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1

from consentry.detectors.devices import resolve_device
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError, StageError


class FacenetEmbedder:
    """512-d InceptionResnetV1 embeddings of 160 px chips, standardised as facenet-pytorch does."""

    name: ClassVar[str] = "facenet-inception-resnet-v1"
    dim: ClassVar[int] = 512
    chip_size: ClassVar[int] = 160
    chip_padding: ClassVar[float] = 0.25

    def __init__(self, weights: Path, device: str = "auto", batch_size: int = 32) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise ConfigurationError(
                f"facenet weights not found at {weights}; set facenet_weights to a state-dict file",
                code=codes.MODEL_WEIGHTS_MISSING,
            )
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model = InceptionResnetV1(pretrained=None, classify=False)
            # logits.* belong to the classification head, which embedding does not use.
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, ValueError, AttributeError, KeyError) as exc:
            raise ConfigurationError(
                f"{weights} is not an InceptionResnetV1 state dict: {exc}", code=codes.MODEL_WEIGHTS_INVALID
            ) from exc
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._model = model.to(self.device).eval()

    @torch.inference_mode()
    def embed(self, chips: np.ndarray) -> np.ndarray:
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3):
            raise BadInputError(
                f"expected (N, 160, 160, 3) chips, got {chips.shape}", code=codes.FACE_CHIP_SHAPE
            )
        out = []
        try:
            for start in range(0, len(chips), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + self.batch_size]))
                x = batch.to(self.device).permute(0, 3, 1, 2).float()
                out.append(self._model((x - 127.5) / 128.0).float().cpu().numpy())
        except RuntimeError as exc:
            raise StageError("face embedding failed", code=codes.FACE_EMBEDDING_FAILED) from exc
        if not out:
            return np.zeros((0, self.dim), np.float32)
        # InceptionResnetV1 already L2-normalises its output.
        return np.concatenate(out).astype(np.float32)
