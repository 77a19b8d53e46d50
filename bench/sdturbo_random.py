"""Build an SD-TURBO-ARCHITECTURE pipeline (SD 2.1 layout) with RANDOM weights, from configs alone.

For benchmarks only: SD 2.1's UNet (320/640/1280/1280, two layers per block, cross-attention
1024, attention head dims (5, 10, 20, 20), linear projections, sample size 64 = 512 px), SD's
VAE, an OpenCLIP-ViT-H-like text encoder (hidden 1024, 23 layers, 16 heads, MLP 4096, GELU)
and SD-Turbo's Euler schedule ("trailing" spacing, so one step starts from pure noise). The
weights are random and the images are noise: only timings and memory mean anything. Nothing is
downloaded: the tokenizer is the tiny pipeline's byte-level BPE, as in ``sd15_random.py``.

    .venv/bin/python bench/sdturbo_random.py /tmp/consentry-sdturbo-random
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import repo_on_path
from sd15_random import SD15_UNET, SD15_VAE

BUILT_BY = "consentry bench/sdturbo_random.py"
FORMAT = 1

SDTURBO_UNET: dict[str, Any] = SD15_UNET | {
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}
SDTURBO_TEXT: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}
SDTURBO_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}


def is_built(directory: Path) -> bool:
    """Whether ``directory`` holds a complete build of this format (safe to reuse)."""
    try:
        marker = json.loads((directory / "consentry-model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("built_by") == BUILT_BY
        and marker.get("format") == FORMAT
        and (directory / "model_index.json").is_file()
    )


def build_sdturbo_random(out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Build and ``save_pretrained`` the random SD-Turbo-architecture pipeline into ``out_dir``
    (absent or empty); returns parameter counts and the build time."""
    repo_on_path()
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
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
                **SDTURBO_TEXT,
            )
        )
        vae = AutoencoderKL(**SD15_VAE)
        unet = UNet2DConditionModel(**SDTURBO_UNET)
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDTURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    built_s = time.perf_counter() - started
    pipe.save_pretrained(out_dir, safe_serialization=True)
    modules: dict[str, Any] = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    counts = {name: sum(int(p.numel()) for p in module.parameters()) for name, module in modules.items()}
    info = {
        "untrained": True,
        "built_by": BUILT_BY,
        "format": FORMAT,
        "seed": seed,
        "description": (
            "SD-Turbo (SD 2.1) ARCHITECTURE with RANDOM, untrained weights, built offline for "
            "benchmarks. Outputs are noise; only timings and memory mean anything."
        ),
        "parameters": counts,
        "tokenizer_vocab_size": len(tokenizer),
        "build_s": round(built_s, 2),
        "save_s": round(time.perf_counter() - started - built_s, 2),
    }
    (out_dir / "consentry-model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: sdturbo_random.py OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(build_sdturbo_random(Path(argv[0])), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
