"""Zero-shot identity conditioning: diffusers' IP-Adapter, loaded from local paths only.

The original (non-plus) IP-Adapter: a CLIP vision encoder embeds the reference faces,
``image_proj`` turns each embedding into four extra context tokens, and each cross-attention layer
gets a ``to_k_ip``/``to_v_ip`` pair to attend to them. Weights and encoder come by path, never
fetched. diffusers takes some wrong files silently and fails obscurely on others, so the file is
checked against the UNet up front; every failure is a ``ConfigurationError`` naming path and setting.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConfigurationError

# The settings (CONSENTRY_IP_ADAPTER_WEIGHTS, ..._IMAGE_ENCODER) that error messages point to.
WEIGHTS_SETTING = "ip_adapter_weights"
ENCODER_SETTING = "ip_adapter_image_encoder"
NUM_TOKENS = 4  # context tokens per reference image; diffusers hard-codes 4 for this variant

_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
Shapes = dict[str, tuple[int, ...]]


def _hidden_size(name: str, block_out_channels: Sequence[int]) -> int:
    """The channel width of the attention layer ``name``, exactly as diffusers derives it."""
    if name.startswith("mid_block"):
        return int(block_out_channels[-1])
    block = int(name.split(".")[1])
    if name.startswith("up_blocks"):
        return int(list(reversed(block_out_channels))[block])
    return int(block_out_channels[block])


def expected_shapes(unet: Any, projection_dim: int) -> Shapes:
    """Every key of an original IP-Adapter file for ``unet`` and its shape.

    The numbering follows diffusers' ``_convert_ip_adapter_attn_to_diffusers``: processors are
    walked in ``unet.attn_processors`` order and each cross-attention one takes the next odd
    number (1, 3, 5, ...), the original repository having counted self-attention layers too.
    """
    config = unet.config
    cross = config.cross_attention_dim
    if isinstance(cross, bool) or not isinstance(cross, int):
        # A per-block cross_attention_dim (a list) is not something diffusers' loader handles.
        raise ConfigurationError(
            f"IP-Adapter needs a UNet with one cross_attention_dim, this one has {cross!r}",
            code=codes.MODEL_INVALID,
        )
    shapes: Shapes = {
        "image_proj.proj.weight": (NUM_TOKENS * cross, projection_dim),
        "image_proj.proj.bias": (NUM_TOKENS * cross,),
        "image_proj.norm.weight": (cross,),
        "image_proj.norm.bias": (cross,),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        hidden = _hidden_size(name, config.block_out_channels)
        shapes[f"ip_adapter.{key_id}.to_k_ip.weight"] = (hidden, cross)
        shapes[f"ip_adapter.{key_id}.to_v_ip.weight"] = (hidden, cross)
        key_id += 2
    return shapes


def _invalid(detail: str, setting: str = WEIGHTS_SETTING) -> ConfigurationError:
    return ConfigurationError(f"{detail}; check {setting}", code=codes.MODEL_WEIGHTS_INVALID)


def _missing(detail: str, setting: str) -> ConfigurationError:
    return ConfigurationError(f"{detail}; set {setting} to a local copy", code=codes.MODEL_WEIGHTS_MISSING)


def _read_shapes(weights_file: Path) -> Shapes:
    """Key -> shape from the safetensors header, without loading a tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_file), framework="pt", device="cpu") as handle:
            found: Shapes = {}
            for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                tensor = handle.get_slice(key)
                if tensor.get_dtype() not in _FLOAT_DTYPES:
                    raise _invalid(
                        f"tensor {key} in {weights_file} is {tensor.get_dtype()}, not floating point"
                    )
                found[key] = tuple(int(n) for n in tensor.get_shape())
            return found
    except ConfigurationError:
        raise
    except Exception as exc:  # SafetensorError on garbage, truncation, a bad header
        raise _invalid(f"{weights_file} is not a readable safetensors file ({exc})") from exc


def _check_weights(
    found: Shapes, expected: Shapes, weights_file: Path, encoder_dir: Path, proj_dim: int
) -> None:
    missing = sorted(expected.keys() - found.keys())
    # Extra keys are refused too: LoRA (FaceID) or resampler (plus) keys would switch diffusers to
    # another adapter variant than the one this UNet was checked for.
    extra = sorted(found.keys() - expected.keys())
    if missing or extra:
        raise _invalid(
            f"{weights_file} is not an original IP-Adapter for this UNet: "
            f"{len(missing)} key(s) missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
        )
    proj = found["image_proj.proj.weight"]
    if len(proj) == 2 and proj[1] != proj_dim:
        raise _invalid(
            f"{weights_file} expects {proj[1]}-dim image embeddings but the encoder in {encoder_dir} "
            f"({ENCODER_SETTING}) produces {proj_dim}"
        )
    wrong = [f"{k} {found[k]} != {shape}" for k, shape in expected.items() if found[k] != shape]
    if wrong:
        raise _invalid(
            f"{weights_file} was built for another UNet (e.g. another cross-attention size): "
            + "; ".join(wrong[:3])
        )


def _load_encoder(encoder_dir: Path, unet: Any) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    try:
        # Cast after loading: the dtype keyword of from_pretrained was renamed in transformers 4.56.
        encoder: Any = CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir), local_files_only=True)
        encoder = encoder.to(device=unet.device, dtype=unet.dtype)
        processor = CLIPImageProcessor.from_pretrained(str(encoder_dir), local_files_only=True)
    except Exception as exc:  # OSError, a config of another model type, mismatched tensors
        raise _invalid(
            f"cannot load a CLIP image encoder from {encoder_dir}: {type(exc).__name__}: {exc}",
            ENCODER_SETTING,
        ) from exc
    side = int(encoder.config.image_size)
    if _crop_side(processor) not in (None, (side, side)):
        # CLIP refuses other input sizes, but only at generation time and obscurely.
        raise _invalid(
            f"the processor in {encoder_dir} crops to {_crop_side(processor)}, its encoder "
            f"takes {side}x{side}",
            ENCODER_SETTING,
        )
    encoder.eval()
    return encoder, processor


def _crop_side(processor: Any) -> tuple[Any, Any] | None:
    if not getattr(processor, "do_center_crop", False):
        return None
    crop = getattr(processor, "crop_size", None) or {}
    return crop.get("height"), crop.get("width")


def attach_ip_adapter(pipe: Any, weights_file: Path, image_encoder_dir: Path, *, scale: float = 0.6) -> None:
    """Load an original IP-Adapter and its CLIP image encoder into ``pipe`` (in place).

    Afterwards every call of ``pipe`` must carry image conditioning (see
    :func:`ip_adapter_call_kwargs`); ``scale`` 0 makes the branch a no-op, bit for bit.
    A failed attach leaves the pipeline without any IP-Adapter.
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise ConfigurationError(
            f"IP-Adapter scale must be finite and >= 0, got {scale!r}", code=codes.CONFIG_INVALID
        )
    weights_file = Path(weights_file).expanduser().resolve()
    encoder_dir = Path(image_encoder_dir).expanduser().resolve()
    if not weights_file.is_file():
        raise _missing(f"IP-Adapter weights file {weights_file} does not exist", WEIGHTS_SETTING)
    if not (encoder_dir / "config.json").is_file():
        raise _missing(
            f"image encoder folder {encoder_dir} does not exist or has no config.json", ENCODER_SETTING
        )
    if weights_file.suffix != ".safetensors":
        # diffusers would torch.load (unpickle) anything else: arbitrary code from a file.
        raise _invalid(f"{weights_file} is not a .safetensors file")
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(pipe, "load_ip_adapter"):
        raise ConfigurationError(
            f"{type(pipe).__name__} has no UNet that takes an IP-Adapter", code=codes.MODEL_INVALID
        )
    encoder, processor = _load_encoder(encoder_dir, unet)
    projection_dim = int(encoder.config.projection_dim)
    found = _read_shapes(weights_file)
    _check_weights(found, expected_shapes(unet, projection_dim), weights_file, encoder_dir, projection_dim)
    processor = _feature_extractor(pipe, processor, encoder)
    try:
        # Registered first so load_ip_adapter neither looks for an encoder itself nor invents a
        # 224-pixel feature extractor that would not fit this encoder.
        pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
        pipe.load_ip_adapter(
            str(weights_file.parent),
            subfolder="",
            weight_name=weights_file.name,
            image_encoder_folder=None,
            local_files_only=True,
        )
        pipe.set_ip_adapter_scale(float(scale))
    except Exception as exc:
        with contextlib.suppress(Exception):  # the load error is the one worth reporting
            _restore(pipe)
        raise _invalid(f"diffusers could not load {weights_file}: {type(exc).__name__}: {exc}") from exc


def _feature_extractor(pipe: Any, processor: Any, encoder: Any) -> Any:
    """The encoder's own processor, unless a safety checker relies on the pipeline's: the two
    share one ``feature_extractor`` slot, and one of another size would blind the checker."""
    current = getattr(pipe, "feature_extractor", None)
    if getattr(pipe, "safety_checker", None) is None or current is None:
        return processor
    side = int(encoder.config.image_size)
    if _crop_side(current) != (side, side):
        raise _invalid(
            f"the pipeline's safety checker crops to {_crop_side(current)} but the IP-Adapter encoder "
            f"takes {side}x{side}; they cannot share the pipeline's feature extractor",
            ENCODER_SETTING,
        )
    return current


def _is_attached(pipe: Any) -> bool:
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return False
    # IP processors without the projection are what a load that failed half-way leaves.
    return getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj" or any(
        "IPAdapter" in type(processor).__name__ for processor in unet.attn_processors.values()
    )


def _restore(pipe: Any) -> None:
    if _is_attached(pipe):
        pipe.unload_ip_adapter()
    pipe.register_modules(image_encoder=None)
    # diffusers keeps the feature extractor of pipelines that can have a safety checker; without
    # a checker nothing else uses it, so the pipeline returns to its loaded state.
    if getattr(pipe, "safety_checker", None) is None:
        pipe.register_modules(feature_extractor=None)


def ip_adapter_call_kwargs(faces: Sequence[Image.Image]) -> dict[str, Any]:
    """Pipeline call arguments that condition on every reference face.

    diffusers takes one entry per loaded IP-Adapter; giving our single adapter a *list* of faces
    makes it encode them as one batch, project each to its own four tokens and let every
    cross-attention layer attend to all of them together. That is a joint, order-independent use
    of the references that diffusers 0.42 supports natively. Averaging the embeddings instead
    would need ``ip_adapter_image_embeds`` with a guidance-dependent negative half, i.e. the
    pipeline and the guidance scale, which a caller's kwargs cannot know here.
    """
    if isinstance(faces, Image.Image) or not faces:
        raise BadInputError(
            "IP-Adapter needs a non-empty sequence of reference faces",
            code=codes.GENERATION_REFERENCE_REQUIRED,
        )
    if not all(isinstance(face, Image.Image) for face in faces):
        raise BadInputError(
            "every IP-Adapter reference must be a PIL image", code=codes.GENERATION_INVALID_PARAMS
        )
    return {"ip_adapter_image": [[face.convert("RGB") for face in faces]]}


def detach_ip_adapter(pipe: Any) -> None:
    """Remove the IP-Adapter: original attention processors, no image encoder. Idempotent."""
    if not _is_attached(pipe) and getattr(pipe, "image_encoder", None) is None:
        return
    try:
        _restore(pipe)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot unload the IP-Adapter from {type(pipe).__name__}: {type(exc).__name__}: {exc}",
            code=codes.MODEL_INVALID,
        ) from exc
