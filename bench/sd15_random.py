"""Build a Stable-Diffusion-1.5-ARCHITECTURE pipeline with RANDOM weights, from configs alone.

For benchmarks only: the layer shapes and counts are SD-1.5's (UNet 320/640/1280/1280, two
layers per block, cross-attention 768, head dim 8, sample size 64; SD-1.5's VAE; a 12-layer
768-wide CLIP text encoder; PNDM with SD-1.5's schedule), so timings and memory match the real
model's architecture, but the weights are random and the images are noise. Nothing is
downloaded: the tokenizer is the tiny pipeline's byte-level BPE (``generation/tiny.py``), so
the text encoder's vocabulary is that tokenizer's size (about 530 entries instead of CLIP's
49,408: 37 M fewer embedding parameters, irrelevant to speed).

The folder gets a ``consentry-model.json`` marker with ``"untrained": true``, so
``DiffusersTextToImage`` reports it as untrained. Build it somewhere git-ignored (``/tmp``):

    .venv/bin/python bench/sd15_random.py /tmp/consentry-sd15-random
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import repo_on_path

BUILT_BY = "consentry bench/sd15_random.py"
FORMAT = 1

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def is_built(directory: Path, built_by: str = BUILT_BY) -> bool:
    """Whether ``directory`` holds a complete build of this format by ``built_by`` (safe to reuse)."""
    try:
        marker = json.loads((directory / "consentry-model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("built_by") == built_by
        and marker.get("format") == FORMAT
        and (directory / "model_index.json").is_file()
    )


def build_random_sd(
    out_dir: Path,
    *,
    unet_config: dict[str, Any],
    text_config: dict[str, Any],
    scheduler: str,
    scheduler_config: dict[str, Any],
    built_by: str,
    description: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Build and ``save_pretrained`` a Stable-Diffusion-layout pipeline with random weights into
    ``out_dir`` (absent or empty), SD's VAE and the tiny pipeline's tokenizer; returns the marker
    (parameter counts, build and save times)."""
    repo_on_path()
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from consentry.generation.tiny import _build_tokenizer

    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SystemExit(f"{out_dir} is not empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _build_tokenizer(out_dir / "tokenizer")
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **text_config,
            )
        )
        vae = AutoencoderKL(**SD15_VAE)
        unet = UNet2DConditionModel(**unet_config)
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=getattr(diffusers, scheduler)(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    built_s = time.perf_counter() - started
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # diffusers' models carry no usable type information for mypy: Any.
    modules: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    counts = {name: sum(int(p.numel()) for p in module.parameters()) for name, module in modules.items()}
    info = {
        "untrained": True,
        "built_by": built_by,
        "format": FORMAT,
        "seed": seed,
        "description": description,
        "parameters": counts,
        "tokenizer_vocab_size": len(tokenizer),
        "build_s": round(built_s, 2),
        "save_s": round(time.perf_counter() - started - built_s, 2),
    }
    (out_dir / "consentry-model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def build_sd15_random(out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """The random SD-1.5-architecture pipeline (see the module docstring)."""
    return build_random_sd(
        out_dir,
        unet_config=SD15_UNET,
        text_config=SD15_TEXT,
        scheduler="PNDMScheduler",
        scheduler_config=SD15_SCHEDULER,
        built_by=BUILT_BY,
        description=(
            "Stable Diffusion 1.5 ARCHITECTURE with RANDOM, untrained weights, built offline for "
            "benchmarks. Outputs are noise; only timings and memory mean anything."
        ),
        seed=seed,
    )


def ensure_built(script: str, directory: Path) -> dict[str, Any]:
    """Build with ``bench/SCRIPT DIR`` in a subprocess (its peak memory stays out of the caller)
    unless ``directory`` already holds that build; the build's marker, and whether it was built now."""
    module = __import__(Path(script).stem)
    built_now = not module.is_built(directory)
    if built_now:
        if directory.exists():
            shutil.rmtree(directory)
        path = Path(__file__).with_name(script)
        subprocess.run([sys.executable, str(path), str(directory)], check=True, stdout=subprocess.DEVNULL)
    marker: dict[str, Any] = json.loads((directory / "consentry-model.json").read_text(encoding="utf-8"))
    return {**marker, "built_in_this_run": built_now, "directory": str(directory)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: sd15_random.py OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(build_sd15_random(Path(argv[0])), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
