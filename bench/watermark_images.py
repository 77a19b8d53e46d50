"""Images and attacks for ``bench/watermark_robustness.py``.

Attacks are defined here once, in words and code: crops keep the pixel scale (no resize back),
"resize0.5+back" is bicubic half size and back, brightness is PIL's multiplicative enhancer.
The unmarked set mixes photo crops, resized photos, synthetic images, noise, tiny-diffusion
outputs and images marked under another deployment's key.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from common import faces_dir, repo_on_path
from PIL import Image, ImageEnhance

repo_on_path()
from consentry.provenance.watermark import Watermarker  # noqa: E402

Attack = Callable[[Image.Image], Image.Image]

# There is no default watermark key: deployments make their own (``consentry keys init``). The
# benchmark marks with a fixed key of its own, so runs are repeatable, and reads the "another
# deployment" set with a second one.
BENCH_KEY = b"consentry.bench.watermark-key.v2"
OTHER_DEPLOYMENT_KEY = b"consentry.bench.another-deployment"


def bench_watermarker() -> Watermarker:
    return Watermarker.with_key(BENCH_KEY)


def jpeg(q: int) -> Attack:
    def run(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return run


def resize_back(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.resize((w // 2, h // 2), Image.Resampling.BICUBIC).resize((w, h), Image.Resampling.BICUBIC)


def crop(left: float, top: float, right: float, bottom: float) -> Attack:
    def run(im: Image.Image) -> Image.Image:  # keeps the pixel scale: no resize back
        w, h = im.size
        return im.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))

    return run


def bright(k: float) -> Attack:
    return lambda im: ImageEnhance.Brightness(im).enhance(k)


def half_kept(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)


def kept(factor: float) -> Attack:
    """Resized and kept at the new size (the decoder must find the scale)."""
    return lambda im: im.resize(
        (round(im.width * factor), round(im.height * factor)), Image.Resampling.BICUBIC
    )


ATTACKS: dict[str, Attack] = {
    "none": lambda im: im,
    "jpeg90": jpeg(90),
    "jpeg75": jpeg(75),
    "jpeg50": jpeg(50),
    "resize0.5+back": resize_back,
    "crop90-center": crop(0.05, 0.05, 0.95, 0.95),
    "crop90-corner": crop(0.1, 0.1, 1.0, 1.0),
    "crop10-one-side": crop(0.1, 0.0, 1.0, 1.0),
    "brightness-20%": bright(0.8),
    "brightness+20%": bright(1.2),
    "resize0.5+back,jpeg75": lambda im: jpeg(75)(resize_back(im)),
    "jpeg75,resize0.5+back (gate)": lambda im: resize_back(jpeg(75)(im)),
    "extra: crop90-corner,jpeg50": lambda im: jpeg(50)(crop(0.1, 0.1, 1.0, 1.0)(im)),
    "extra: resize0.5 kept": half_kept,
    "extra: resize0.75 kept": kept(0.75),
    "extra: resize0.75 kept,jpeg75": lambda im: jpeg(75)(kept(0.75)(im)),
    "extra: resize1.5 kept": kept(1.5),
    # Beyond the goals, to show where the limits are:
    "limit: jpeg30": jpeg(30),
    "limit: crop50-center": crop(0.25, 0.25, 0.75, 0.75),
    "limit: rotate 1deg": lambda im: im.rotate(1.0, Image.Resampling.BICUBIC),
}
REQUIRED = [a for a in ATTACKS if not a.startswith(("extra", "limit"))]
EXTRA = [a for a in ATTACKS if a.startswith("extra")]


def square(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.convert("RGB").crop(box).resize((size, size), Image.Resampling.LANCZOS)


def synthetic(rng: np.random.Generator, size: int, textured: bool) -> Image.Image:
    """Smooth: a bicubic-upsampled random colour field. Textured: octaves of noise + gratings."""

    def field(cells: int) -> np.ndarray:
        return np.asarray(
            Image.fromarray(np.uint8(rng.integers(0, 256, (cells, cells, 3)))).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )

    img = field(int(rng.integers(3, 9)))
    if textured:
        yy, xx = np.mgrid[:size, :size]
        for cells, amp in ((16, 0.5), (64, 0.35), (size // 2, 0.25)):
            img = img * (1 - amp) + field(cells) * amp
        for _ in range(3):
            f, th = rng.uniform(0.02, 0.3), rng.uniform(0, np.pi)
            img += 20 * np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)))[..., None]
    return Image.fromarray(np.uint8(np.clip(img, 0, 255)))


def tiny_images(sizes: list[int]) -> list[Image.Image]:
    from consentry.generation.base import GenerationJob
    from consentry.generation.diffusers_backend import DiffusersTextToImage
    from consentry.generation.tiny import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        gen = DiffusersTextToImage(build_tiny_pipeline(Path(tmp) / "tiny"), device="cpu")
        return [
            gen.generate(
                GenerationJob(
                    prompt="a portrait photo", seed=i, steps=3, width=s, height=s, guidance_scale=5.0
                )
            ).images[0]
            for i, s in enumerate(sizes)
        ]


def image_set(quick: bool) -> tuple[list[tuple[str, Image.Image]], list[Image.Image], list[Image.Image]]:
    """Marked-test images (category, image), the photos, and the tiny-pipeline outputs."""
    fd = faces_dir()
    with (fd / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    lfw = [Image.open(fd / r["path"]).convert("RGB") for r in rows if r["path"].startswith("lfw/")]
    groups = [Image.open(p).convert("RGB") for p in sorted((fd / "groups").glob("*.jpg"))]
    rng = np.random.default_rng(2026)
    n = 3 if quick else 1
    tiny = tiny_images([512, 512, 256, 256] if quick else [512] * 4 + [256] * 4)
    out = [("photo-lfw-512", square(p, 512)) for p in lfw[::3][: 30 // n]]
    out += [("photo-lfw-1024", square(p, 1024)) for p in lfw[1::12][: 8 // n]]
    out += [("photo-group-512", square(p, 512)) for p in groups[::n]]
    out += [("photo-group-1024", square(p, 1024)) for p in groups[: 6 // n]]
    out += [("synthetic-smooth-512", synthetic(rng, 512, False)) for _ in range(5 // n)]
    out += [("synthetic-textured-512", synthetic(rng, 512, True)) for _ in range(5 // n)]
    out += [(f"tiny-diffusion-{im.width}", im) for im in tiny]
    return out, lfw + groups, tiny


def unmarked(
    photos: list[Image.Image], tiny: list[Image.Image], rng: np.random.Generator, quick: bool
) -> Iterator[tuple[str, Image.Image]]:
    """(kind, image) pairs that carry no mark under our key: >= 1000 unless --quick."""
    k = 5 if quick else 1

    def rcrop(im: Image.Image) -> Image.Image:
        s = int(rng.integers(128, min(im.size) + 1))
        x, y = int(rng.integers(0, im.width - s + 1)), int(rng.integers(0, im.height - s + 1))
        out = im.crop((x, y, x + s, y + s))
        return out.resize((int(s * 512 / 250),) * 2) if rng.random() < 0.3 else out

    for _ in range(700 // k):
        yield "photo crop", rcrop(photos[int(rng.integers(len(photos)))])
    for p in photos[:: 2 * k]:
        yield "photo resized", square(p, int(rng.choice([256, 512, 768])))
    for _ in range(200 // k):
        yield "synthetic", synthetic(rng, int(rng.integers(128, 641)), bool(rng.random() < 0.5))
    for _ in range(150 // k):
        h, w = rng.integers(128, 641, 2)
        noise = (
            rng.normal(128, rng.uniform(5, 80), (h, w, 3))
            if rng.random() < 0.5
            else rng.integers(0, 256, (h, w, 3))
        )
        yield "noise", Image.fromarray(np.uint8(np.clip(noise, 0, 255)))
    for i in range(100 // k):
        im = tiny[i % len(tiny)]
        yield "tiny diffusion", im if i < len(tiny) else jpeg(int(rng.integers(50, 95)))(rcrop(im))
    for c in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 30)]:
        yield "flat", Image.new("RGB", (512, 512), c)
    other = Watermarker.with_key(OTHER_DEPLOYMENT_KEY)
    for i in range(50 // k):
        yield "marked under another key", other.embed(square(photos[i], 512), rng.bytes(8))
