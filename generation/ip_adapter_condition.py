"""IP-Adapter identity conditioning as one component of the local diffusers backend.

The adapter and its image encoder are attached to the shared pipeline once, at load (so a wrong
weight file is a configuration error at start-up, not a failed request). Once attached, every
call of the UNet needs image conditioning: an ``ip_adapter`` job is conditioned on its verified
reference photos at the configured scale; every other job runs at scale 0 with a neutral image,
which diffusers makes a no-op bit for bit (measured in tests/generation/test_ip_adapter.py).
Callers hold the pipeline's lock: the scale is pipeline state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from consentry.generation.ip_adapter import attach_ip_adapter, ip_adapter_call_kwargs

_NEUTRAL = Image.new("RGB", (64, 64), (127, 127, 127))


class IPAdapterCondition:
    def __init__(self, weights_file: Path, image_encoder_dir: Path, *, scale: float = 0.6) -> None:
        self.weights_file = Path(weights_file)
        self.image_encoder_dir = Path(image_encoder_dir)
        self.scale = scale
        self._pipe: Any = None

    def attach(self, pipe: Any) -> None:
        """Load the adapter and encoder into ``pipe`` (ConfigurationError when they do not fit)."""
        attach_ip_adapter(pipe, self.weights_file, self.image_encoder_dir, scale=self.scale)
        self._pipe = pipe

    def call_kwargs(self, references: Sequence[Image.Image]) -> dict[str, Any]:
        """Condition on every verified reference photo, at the configured scale."""
        self._pipe.set_ip_adapter_scale(float(self.scale))
        return ip_adapter_call_kwargs(references)

    def neutral_kwargs(self) -> dict[str, Any]:
        """For jobs of other modes: the branch switched off (scale 0 leaves the base pixels)."""
        self._pipe.set_ip_adapter_scale(0.0)
        return ip_adapter_call_kwargs([_NEUTRAL])
