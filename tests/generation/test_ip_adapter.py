"""IP-Adapter conditioning against the tiny pipeline and a tiny, self-built IP-Adapter.

Everything is built here, offline: the real diffusers ``load_ip_adapter`` path runs on random
weights. The pictures mean nothing; what is checked is that the conditioning is deterministic,
reaches the UNet, vanishes at scale 0, and that wrong files fail as configuration errors.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from consentry.generation.diffusers_backend import MARKER_FILE
from consentry.generation.ip_adapter import (
    attach_ip_adapter,
    detach_ip_adapter,
    ip_adapter_call_kwargs,
)
from consentry.generation.tiny import build_tiny_pipeline
from consentry.generation.tiny_ip_adapter import (
    BUILT_BY,
    IPAdapterPaths,
    build_tiny_ip_adapter,
    save_image_encoder,
)
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError, ConflictError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("ipa") / "tiny", seed=0)


@pytest.fixture(scope="module")
def adapter(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> IPAdapterPaths:
    return build_tiny_ip_adapter(tiny_dir, tmp_path_factory.mktemp("ipa") / "adapter", seed=0)


def _load(tiny_dir: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(tiny_dir: Path) -> Any:
    return _load(tiny_dir)


@pytest.fixture(scope="module")
def attached(tiny_dir: Path, adapter: IPAdapterPaths) -> Any:
    pipe = _load(tiny_dir)
    attach_ip_adapter(pipe, adapter.weights_file, adapter.image_encoder_dir)
    return pipe


def _generate(pipe: Any, **kwargs: Any) -> np.ndarray:
    with torch.inference_mode():
        result = pipe(
            prompt="a portrait photo",
            num_inference_steps=2,
            width=256,
            height=256,
            guidance_scale=5.0,
            generator=torch.Generator(device="cpu").manual_seed(7),
            output_type="pil",
            **kwargs,
        )
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def _gradient(*, flipped: bool = False) -> Image.Image:
    """A synthetic reference: a diagonal colour ramp (mirrored for a second, different one)."""
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 2
    pixels = np.stack([ramp, 255 - ramp, np.full_like(ramp, 96)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels[:, ::-1].copy() if flipped else pixels)


def _is_clean(pipe: Any) -> bool:
    """No encoder and only the UNet's own attention processors: nothing of an adapter left."""
    processors = pipe.unet.attn_processors.values()
    return pipe.image_encoder is None and not any("IPAdapter" in type(p).__name__ for p in processors)


# --- conditioning ------------------------------------------------------------------------------


def test_same_reference_and_seed_repeat_and_another_reference_changes_the_pixels(attached: Any) -> None:
    first = _generate(attached, **ip_adapter_call_kwargs([_gradient()]))
    again = _generate(attached, **ip_adapter_call_kwargs([_gradient()]))
    other = _generate(attached, **ip_adapter_call_kwargs([_gradient(flipped=True)]))
    assert first.shape == (256, 256, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0  # grey levels: the reference reaches the UNet


def test_several_references_are_used_together_in_any_order(attached: Any) -> None:
    faces = [_gradient(), _gradient(flipped=True)]
    both = _generate(attached, **ip_adapter_call_kwargs(faces))
    reversed_ = _generate(attached, **ip_adapter_call_kwargs(faces[::-1]))
    one = _generate(attached, **ip_adapter_call_kwargs(faces[:1]))
    # Attention over the joint tokens is order-free up to float rounding.
    assert np.abs(both - reversed_).max() <= 1
    assert np.abs(both - one).mean() > 0.5


def test_scale_zero_gives_the_base_pixels_and_detach_restores_the_pipeline(
    pipe: Any, adapter: IPAdapterPaths
) -> None:
    base = _generate(pipe)
    attach_ip_adapter(pipe, adapter.weights_file, adapter.image_encoder_dir, scale=0.0)
    assert pipe.feature_extractor.crop_size == {"height": 32, "width": 32}  # the encoder's own
    assert np.array_equal(_generate(pipe, **ip_adapter_call_kwargs([_gradient()])), base)
    pipe.set_ip_adapter_scale(0.6)
    assert not np.array_equal(_generate(pipe, **ip_adapter_call_kwargs([_gradient()])), base)
    detach_ip_adapter(pipe)
    detach_ip_adapter(pipe)  # idempotent
    assert _is_clean(pipe) and pipe.feature_extractor is None
    assert np.array_equal(_generate(pipe), base)


def test_call_kwargs_need_pil_references() -> None:
    kwargs = ip_adapter_call_kwargs((_gradient().convert("L"),))
    assert [[image.mode for image in images] for images in kwargs["ip_adapter_image"]] == [["RGB"]]
    with pytest.raises(BadInputError) as empty:
        ip_adapter_call_kwargs([])
    assert empty.value.code == codes.GENERATION_REFERENCE_REQUIRED
    with pytest.raises(BadInputError) as wrong:
        ip_adapter_call_kwargs([b"not an image"])  # type: ignore[list-item]
    assert wrong.value.code == codes.GENERATION_INVALID_PARAMS


# --- wrong weights -----------------------------------------------------------------------------


def _other_cross_attention(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    """A genuine IP-Adapter, but for a UNet whose cross_attention_dim is 48 instead of 32."""
    config = json.loads((tiny_dir / "unet" / "config.json").read_text())
    (tmp / "other" / "unet").mkdir(parents=True)
    (tmp / "other" / "unet" / "config.json").write_text(json.dumps(config | {"cross_attention_dim": 48}))
    return build_tiny_ip_adapter(tmp / "other", tmp / "adapter48").weights_file, adapter.image_encoder_dir


def _garbage(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    (tmp / "ip-adapter.safetensors").write_bytes(b"definitely not safetensors " * 40)
    return tmp / "ip-adapter.safetensors", adapter.image_encoder_dir


def _truncated(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    (tmp / "ip-adapter.safetensors").write_bytes(adapter.weights_file.read_bytes()[:-64])
    return tmp / "ip-adapter.safetensors", adapter.image_encoder_dir


def _foreign_keys(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    save_file({"lora.down.weight": torch.zeros(4, 4)}, str(tmp / "ip-adapter.safetensors"))
    return tmp / "ip-adapter.safetensors", adapter.image_encoder_dir


def _pickle_file(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    shutil.copy(adapter.weights_file, tmp / "ip-adapter.bin")
    return tmp / "ip-adapter.bin", adapter.image_encoder_dir


def _other_projection(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    save_image_encoder(tmp / "encoder16", projection_dim=16)
    return adapter.weights_file, tmp / "encoder16"


def _not_an_encoder(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    return adapter.weights_file, tiny_dir / "unet"


def _no_weights(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    return tmp / "absent" / "ip-adapter.safetensors", adapter.image_encoder_dir


def _no_encoder(adapter: IPAdapterPaths, tiny_dir: Path, tmp: Path) -> tuple[Path, Path]:
    return adapter.weights_file, tmp / "absent-encoder"


Case = Callable[[IPAdapterPaths, Path, Path], tuple[Path, Path]]


@pytest.mark.parametrize(
    ("make", "code", "blamed", "setting"),
    [
        (_no_weights, codes.MODEL_WEIGHTS_MISSING, 0, "ip_adapter_weights"),
        (_no_encoder, codes.MODEL_WEIGHTS_MISSING, 1, "ip_adapter_image_encoder"),
        (_other_cross_attention, codes.MODEL_WEIGHTS_INVALID, 0, "ip_adapter_weights"),
        (_garbage, codes.MODEL_WEIGHTS_INVALID, 0, "ip_adapter_weights"),
        (_truncated, codes.MODEL_WEIGHTS_INVALID, 0, "ip_adapter_weights"),
        (_foreign_keys, codes.MODEL_WEIGHTS_INVALID, 0, "ip_adapter_weights"),
        (_pickle_file, codes.MODEL_WEIGHTS_INVALID, 0, "ip_adapter_weights"),
        (_other_projection, codes.MODEL_WEIGHTS_INVALID, 1, "ip_adapter_image_encoder"),
        (_not_an_encoder, codes.MODEL_WEIGHTS_INVALID, 1, "ip_adapter_image_encoder"),
    ],
)
def test_unusable_weights_are_configuration_errors_naming_the_path(
    pipe: Any,
    adapter: IPAdapterPaths,
    tiny_dir: Path,
    tmp_path: Path,
    make: Case,
    code: str,
    blamed: int,
    setting: str,
) -> None:
    paths = make(adapter, tiny_dir, tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        attach_ip_adapter(pipe, *paths)
    assert caught.value.code == code
    assert str(paths[blamed].resolve()) in caught.value.detail
    assert setting in caught.value.detail
    assert _is_clean(pipe)


@pytest.mark.parametrize("scale", [-0.1, float("nan"), True])
def test_scale_must_be_a_finite_non_negative_number(pipe: Any, adapter: IPAdapterPaths, scale: float) -> None:
    with pytest.raises(ConfigurationError) as caught:
        attach_ip_adapter(pipe, adapter.weights_file, adapter.image_encoder_dir, scale=scale)
    assert caught.value.code == codes.CONFIG_INVALID


# --- the tiny build ----------------------------------------------------------------------------


def test_tiny_build_has_diffusers_layout_and_is_marked_untrained(adapter: IPAdapterPaths) -> None:
    from safetensors import safe_open

    with safe_open(str(adapter.weights_file), framework="pt") as handle:
        keys = set(handle.keys())
    # The tiny UNet has four cross-attention layers; diffusers numbers them 1, 3, 5, 7.
    layers = {f"ip_adapter.{n}.{p}.weight" for n in (1, 3, 5, 7) for p in ("to_k_ip", "to_v_ip")}
    assert keys == layers | {f"image_proj.{m}.{t}" for m in ("proj", "norm") for t in ("weight", "bias")}
    marker = json.loads((adapter.weights_file.parents[1] / MARKER_FILE).read_text())
    assert marker["untrained"] is True and marker["built_by"] == BUILT_BY
    assert (adapter.image_encoder_dir / "preprocessor_config.json").is_file()


def test_tiny_build_is_seeded_and_replaces_only_its_own_builds(tiny_dir: Path, tmp_path: Path) -> None:
    def files(paths: IPAdapterPaths) -> list[bytes]:
        return [paths.weights_file.read_bytes(), (paths.image_encoder_dir / "model.safetensors").read_bytes()]

    first = files(build_tiny_ip_adapter(tiny_dir, tmp_path / "a", seed=3))
    assert files(build_tiny_ip_adapter(tiny_dir, tmp_path / "a", seed=3)) == first  # replaced
    assert files(build_tiny_ip_adapter(tiny_dir, tmp_path / "b", seed=3)) == first
    other = files(build_tiny_ip_adapter(tiny_dir, tmp_path / "a", seed=4))
    assert other[0] != first[0] and other[1] != first[1]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ConflictError) as caught:
        build_tiny_ip_adapter(tiny_dir, tmp_path / "foreign")
    assert caught.value.code == codes.MODEL_DIR_NOT_EMPTY
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_tiny_build_needs_a_pipeline_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as missing:
        build_tiny_ip_adapter(tmp_path / "absent", tmp_path / "out")
    assert missing.value.code == codes.MODEL_MISSING
    assert str((tmp_path / "absent").resolve()) in missing.value.detail
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError) as invalid:
        build_tiny_ip_adapter(tmp_path / "empty", tmp_path / "out")
    assert invalid.value.code == codes.MODEL_INVALID
    (tmp_path / "broken" / "unet").mkdir(parents=True)
    broken = {"_class_name": "UNet2DConditionModel", "down_block_types": ["NoSuchBlock2D"]}
    (tmp_path / "broken" / "unet" / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigurationError) as unbuildable:
        build_tiny_ip_adapter(tmp_path / "broken", tmp_path / "out")
    assert unbuildable.value.code == codes.MODEL_INVALID
    assert not (tmp_path / "out").exists()
