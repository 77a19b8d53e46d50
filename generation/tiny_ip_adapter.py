"""Build a tiny, untrained IP-Adapter (and CLIP image encoder) for a tiny diffusers pipeline.

Tests and the offline demo exercise the real IP-Adapter loading path
(:func:`consentry.generation.ip_adapter.attach_ip_adapter`, i.e. diffusers' ``load_ip_adapter``)
without downloading anything. Only the pipeline's UNet config is read: the adapter's keys and
shapes come from :func:`~consentry.generation.ip_adapter.expected_shapes`, the same function that
checks operator-supplied files, so the builder and the checker cannot drift apart. The weights
are random (seeded); the marker file says so. Conditioning does reach the UNet, but it carries no
likeness of anyone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from consentry.generation.ip_adapter import expected_shapes
from consentry.generation.staged_build import staged_build
from consentry.policies import codes
from consentry.policies.errors import ConfigurationError, ConflictError

BUILT_BY = "consentry models tiny-ip-adapter"
# Bumped when the layout of a tiny build changes, so old builds can be told apart.
TINY_IP_ADAPTER_FORMAT = 1

WEIGHTS_NAME = "ip-adapter.safetensors"
IMAGE_SIZE = 32  # the encoder's input side: small enough for a CPU, large enough for 8px patches
# Deliberately unlike the tiny UNet's cross_attention_dim (32), so a swapped axis cannot pass.
PROJECTION_DIM = 24


@dataclass(frozen=True, slots=True)
class IPAdapterPaths:
    """Where a build put the two things :func:`attach_ip_adapter` needs."""

    weights_file: Path
    image_encoder_dir: Path


def _unet_config(pipeline_dir: Path) -> dict[str, Any]:
    path = pipeline_dir / "unet" / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"{pipeline_dir} is not a diffusers pipeline folder with a readable unet/config.json: {exc}",
            code=codes.MODEL_INVALID,
        ) from exc
    if not isinstance(config, dict) or config.get("_class_name") != "UNet2DConditionModel":
        raise ConfigurationError(
            f"{path} does not describe a UNet2DConditionModel; only Stable Diffusion UNets take "
            "this IP-Adapter",
            code=codes.MODEL_INVALID,
        )
    return config


def _adapter_shapes(config: dict[str, Any], pipeline_dir: Path) -> dict[str, tuple[int, ...]]:
    from diffusers import UNet2DConditionModel

    # On the meta device the UNet costs no memory and no time, even for a full-size model: only
    # its attention-processor names are needed.
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
    except Exception as exc:  # unknown block types, inconsistent sizes
        raise ConfigurationError(
            f"the UNet config in {pipeline_dir} does not build: {type(exc).__name__}: {exc}",
            code=codes.MODEL_INVALID,
        ) from exc
    return expected_shapes(unet, PROJECTION_DIM)


def save_image_encoder(directory: Path, *, projection_dim: int = PROJECTION_DIM) -> None:
    """Save a tiny random CLIP vision encoder and its processor config (caller seeds the RNG)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
            projection_dim=projection_dim,
        )
    )
    encoder.save_pretrained(directory, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(directory)


def _adapter_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Random tensors shaped like a trained adapter's (caller seeds the RNG)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        if key == "image_proj.norm.weight":
            tensors[key] = 1.0 + 0.1 * torch.randn(shape)
        elif len(shape) == 1:
            tensors[key] = 0.1 * torch.randn(shape)
        else:
            # nn.Linear's scale (1/sqrt(fan_in)) keeps the extra attention in a sane range.
            tensors[key] = torch.randn(shape) / shape[1] ** 0.5
    return tensors


def _marker_file() -> str:
    # Imported late: the backend may import this module's siblings, and a top-level import here
    # would then be circular.
    from consentry.generation.diffusers_backend import MARKER_FILE

    return MARKER_FILE


def _is_tiny_build(directory: Path) -> bool:
    try:
        marker = json.loads((directory / _marker_file()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("built_by") == BUILT_BY


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConflictError(f"{out_dir} exists and is not a folder", code=codes.MODEL_DIR_NOT_EMPTY)
    if any(out_dir.iterdir()) and not _is_tiny_build(out_dir):
        raise ConflictError(
            f"{out_dir} is not empty and is not a previous `{BUILT_BY}` build; choose an empty or new folder",
            code=codes.MODEL_DIR_NOT_EMPTY,
        )


def build_tiny_ip_adapter(pipeline_dir: Path, out_dir: Path, *, seed: int = 0) -> IPAdapterPaths:
    """Build a seeded, untrained IP-Adapter for the pipeline in ``pipeline_dir`` into ``out_dir``.

    ``out_dir`` must be absent, empty or a previous tiny IP-Adapter build (which is replaced); as
    in :func:`~consentry.generation.tiny.build_tiny_pipeline`, the build is staged in a sibling
    folder and moved into place at the end, so an interrupted build never loads.
    """
    from safetensors.torch import save_file

    pipeline_dir = Path(pipeline_dir).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    if not pipeline_dir.is_dir():
        raise ConfigurationError(f"pipeline folder {pipeline_dir} does not exist", code=codes.MODEL_MISSING)
    config = _unet_config(pipeline_dir)
    shapes = _adapter_shapes(config, pipeline_dir)
    _check_out_dir(out_dir)

    def write(staging: Path) -> None:
        # Fork the RNG so seeding the build does not disturb the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_image_encoder(staging / "image_encoder")
            tensors = _adapter_tensors(shapes)
        (staging / "ip_adapter").mkdir()
        save_file(tensors, str(staging / "ip_adapter" / WEIGHTS_NAME))
        marker = {
            "untrained": True,
            "built_by": BUILT_BY,
            "format": TINY_IP_ADAPTER_FORMAT,
            "seed": seed,
            "cross_attention_dim": config.get("cross_attention_dim"),
            "projection_dim": PROJECTION_DIM,
            "description": (
                "Tiny IP-Adapter and CLIP image encoder with random, untrained weights, built "
                "offline for tests and demos. The reference image changes the output, but no "
                "likeness is transferred: it must not be used to judge identity consistency."
            ),
        }
        (staging / _marker_file()).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    staged_build(out_dir, "IP-Adapter folder", write)
    return IPAdapterPaths(
        weights_file=out_dir / "ip_adapter" / WEIGHTS_NAME, image_encoder_dir=out_dir / "image_encoder"
    )
