"""The one torch device resolver, for face models and generators alike."""

from __future__ import annotations

import torch

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; asking for an absent CUDA is a config error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigurationError(f"unknown torch device {device!r}", code=codes.CONFIG_DEVICE) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {device!r} was requested but CUDA is not available", code=codes.CONFIG_DEVICE
        )
    return resolved
