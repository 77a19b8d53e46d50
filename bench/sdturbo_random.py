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
from pathlib import Path
from typing import Any

from sd15_random import SD15_UNET, build_random_sd
from sd15_random import is_built as sd15_is_built

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
    return sd15_is_built(directory, BUILT_BY)


def build_sdturbo_random(out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Build and ``save_pretrained`` the random SD-Turbo-architecture pipeline into ``out_dir``
    (absent or empty); returns parameter counts and the build time."""
    return build_random_sd(
        out_dir,
        unet_config=SDTURBO_UNET,
        text_config=SDTURBO_TEXT,
        scheduler="EulerDiscreteScheduler",
        scheduler_config=SDTURBO_SCHEDULER,
        built_by=BUILT_BY,
        description=(
            "SD-Turbo (SD 2.1) ARCHITECTURE with RANDOM, untrained weights, built offline for "
            "benchmarks. Outputs are noise; only timings and memory mean anything."
        ),
        seed=seed,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: sdturbo_random.py OUT_DIR", file=sys.stderr)
        return 2
    print(json.dumps(build_sdturbo_random(Path(argv[0])), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
