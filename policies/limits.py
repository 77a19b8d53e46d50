"""Request limits, defined once: the HTTP schemas, the core requests, the generation job and the
settings all read these numbers, so they cannot disagree."""

from __future__ import annotations

MAX_PROMPT_CHARS = 2000
"""Longest prompt (and negative prompt), in characters."""
MAX_REFERENCES = 8
"""Hard cap on reference images per request; ``Settings.max_references`` may only lower it."""
MAX_IMAGES = 4
"""Most images one request may ask for."""
MIN_SIDE = 256
"""Smallest output side: the invisible watermark needs two 128 px tiles a side."""
MAX_SIDE = 2048
"""Largest output side."""
SIDE_MULTIPLE = 8
"""Latent diffusion VAEs downsample by 8; other sizes fail deep inside the model."""
MAX_STEPS = 100
"""Most denoising steps per request: one request must not tie up the GPU for minutes."""
MAX_SEED = 2**31 - 1
"""Largest seed (fits every backend, including upstream services with 32-bit seeds)."""
MAX_GUIDANCE = 50.0
"""Largest classifier-free guidance scale."""
MAX_ENROLL_PHOTOS = 20
"""Most photos in one enrollment."""
MAX_LABEL_CHARS = 200
"""Longest operator label or principal name."""
