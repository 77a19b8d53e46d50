"""Build a tiny, untrained Stable Diffusion pipeline from configs alone.

Tests and the offline demo need a real diffusers pipeline directory (so the production loading
path is the one exercised) but may download nothing. This module builds one from code: a small
UNet, VAE, CLIP text encoder and a byte-level BPE tokenizer whose vocabulary is written here.
The weights are random (seeded), so the images are structured noise, not pictures; the marker
file says so and :class:`~generation.diffusers_backend.DiffusersTextToImage` reports it as
``untrained``.

The VAE downsamples by 8 (four blocks) so a 256x256 image is a 32x32 latent: small enough that a
few denoising steps run in well under a second on a CPU, while the output is large enough for
the invisible watermark (which needs at least 256x256).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from consentry.generation.diffusers_backend import MARKER_FILE
from consentry.generation.staged_build import staged_build
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConflictError

BUILT_BY = "consentry models tiny"
# Bumped when the layout of a tiny build changes, so old builds can be told apart.
TINY_FORMAT = 1

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MAX_TOKENS = 77  # CLIP's context length; transformers 5 no longer defaults it

# A handful of hand-picked merges, so the tokenizer is a genuine BPE (not only bytes) while the
# vocabulary stays a few hundred entries. ``</w>`` marks the end of a word, as in CLIP.
_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("o", "f</w>"),
    ("e", "r</w>"),
    ("o", "n</w>"),
    ("p", "h"),
    ("o", "t"),
    ("ph", "ot"),
    ("phot", "o</w>"),
    ("o", "r"),
    ("p", "or"),
    ("t", "r"),
    ("i", "t</w>"),
    ("a", "it</w>"),
    ("tr", "ait</w>"),
    ("por", "trait</w>"),
)


def _tokenizer_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary: every byte symbol, alone and word-final, plus merges and specials."""
    from tokenizers import pre_tokenizers

    # The 256 printable stand-ins the byte-level pre-tokenizer maps raw bytes to.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(f"{symbol}</w>" for symbol in alphabet)]
    # BPE applies merges in list order, so each merge may only use symbols that exist by then;
    # every merge result becomes a vocabulary entry.
    merges: list[tuple[str, str]] = []
    for left, right in _MERGES:
        if left not in tokens or right not in tokens:
            raise AssertionError(f"tiny tokenizer merge {left!r} {right!r} is out of order")
        merges.append((left, right))
        if left + right not in tokens:
            tokens.append(left + right)
    tokens += [_BOS, _EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def _build_tokenizer(directory: Path) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = _tokenizer_vocab()
    # CLIPTokenizer hands ``merges`` to the ``tokenizers`` BPE unchanged, which wants pairs
    # (``Sequence[tuple[str, str]]``); transformers' ``str | list[str]`` hint is wrong.
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_TOKENS)  # type: ignore[arg-type]
    tokenizer.save_pretrained(directory)
    return tokenizer


def _validate_size(image_size: int) -> None:
    # Multiple of 64 keeps the latent (side / 8) even through the UNet's one downsampling with
    # room to spare; 256 is the invisible watermark's minimum.
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or not 256 <= image_size <= 1024
        or image_size % 64
    ):
        raise BadInputError(
            f"tiny pipeline image_size must be a multiple of 64 in 256..1024, got {image_size!r}",
            code=codes.GENERATION_INVALID_PARAMS,
        )


def _is_tiny_build(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("built_by") == BUILT_BY


def _assemble(tokenizer: Any, *, image_size: int) -> Any:
    """Instantiate the pipeline's modules with random weights (caller seeds the RNG)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    hidden = 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_MAX_TOKENS,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # Stable Diffusion's noise schedule, so the loop behaves like a real model's.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(out_dir: Path, *, seed: int = 0, image_size: int = 256) -> Path:
    """Build and save the tiny untrained pipeline into ``out_dir``; return its resolved path.

    ``out_dir`` must be absent, empty, or a previous tiny build (which is replaced). The build
    goes to a sibling temporary folder first and is moved into place at the end, so an
    interrupted build never leaves a half-written model that would load.
    """
    _validate_size(image_size)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConflictError(f"{out_dir} exists and is not a folder", code=codes.MODEL_DIR_NOT_EMPTY)
        if any(out_dir.iterdir()) and not _is_tiny_build(out_dir):
            raise ConflictError(
                f"{out_dir} is not empty and is not a previous `{BUILT_BY}` build; "
                "choose an empty or new folder",
                code=codes.MODEL_DIR_NOT_EMPTY,
            )

    def write(staging: Path) -> None:
        # Fork the RNG so seeding the build does not disturb the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tokenizer = _build_tokenizer(staging / "tokenizer")
            pipeline = _assemble(tokenizer, image_size=image_size)
        pipeline.save_pretrained(staging, safe_serialization=True)
        marker = {
            "untrained": True,
            "built_by": BUILT_BY,
            "format": TINY_FORMAT,
            "seed": seed,
            "image_size": image_size,
            "description": (
                "Tiny Stable Diffusion pipeline with random, untrained weights, built offline "
                "for tests and demos. It produces structured noise, not pictures of anything, "
                "and must not be used to judge image quality or identity consistency."
            ),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    staged_build(out_dir, "model folder", write)
    return out_dir
