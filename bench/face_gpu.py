"""Face pipeline throughput on the GPU: stock MTCNN.detect against our detect + align + embed.

Same real photos for both (``$CONSENTRY_FACES_DIR`` or ../shared/faces: LFW and the group
photos, each letterboxed onto a 512x512 black canvas so that one batch is one tensor). For each
batch size the script times, interleaved run by run so all variants see the same machine state:

- ``stock``: facenet-pytorch's ``MTCNN.detect`` with the same face size and thresholds as ours;
- ``ours``: ``FaceAnalyzer.analyze`` (detect, align, embed: what the gate calls);
- its sub-stages on the same batch: ``detect`` (FaceDetector), ``align`` (align_faces on the
  detections, CPU) and ``embed`` (DlibResNetEmbedder on the chips).

CUDA work is fenced with ``torch.cuda.synchronize`` before and after every timed call. Goals
(GPU only): <= 8 ms per image at batch 1, >= 1500 images/s batched, >= 10x stock MTCNN's best
throughput in the same run. Without CUDA it runs a few images on the CPU and writes
``face_gpu_cpu.{json,md}``, marked device=cpu: a smoke run, never a GPU figure.

Run: .venv/bin/python bench/face_gpu.py [--device auto|cpu|cuda] [--batches 1,16,64,128]
     [--images N] [--repeats N] [--weights dlib_face_recognition_resnet_model_v1.dat]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS_DIR,
    faces_dir,
    goal,
    goal_text,
    machine_info,
    md_table,
    measure_interleaved,
    repo_on_path,
    write_results,
)
from PIL import Image

repo_on_path()
import torch  # noqa: E402
from facenet_pytorch import MTCNN  # noqa: E402

from consentry.detectors.align import align_faces  # noqa: E402
from consentry.detectors.analyzer import FaceAnalyzer  # noqa: E402
from consentry.detectors.detection import DEFAULT_STAGE_THRESHOLDS, FaceDetector  # noqa: E402
from consentry.detectors.embedders import DlibResNetEmbedder  # noqa: E402

GOAL_MS_BATCH1, GOAL_IMAGES_PER_S, GOAL_VS_STOCK = 8.0, 1500.0, 10.0
STAGES = ("stock", "ours", "detect", "align", "embed")


def load_photos(root: Path, size: int, count: int) -> list[Image.Image]:
    """``count`` letterboxed RGB photos, LFW and group photos mixed, cycling when too few."""
    paths = sorted(root.glob("lfw/*/*.jpg")) + sorted(root.glob("groups/*.jpg"))
    if not paths:
        raise SystemExit(f"no photos under {root}/lfw or {root}/groups")
    random.Random(0).shuffle(paths)
    photos = []
    for path in paths[:count]:
        image = Image.open(path).convert("RGB")
        scale = size / max(image.size)
        w, h = round(image.width * scale), round(image.height * scale)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2))
        photos.append(canvas)
    return [photos[i % len(photos)] for i in range(count)]


def bench_batch(
    batch: int, photos: list[Image.Image], models: dict[str, Any], repeats: int, sync: Any
) -> dict[str, Any]:
    detector, embedder, analyzer, stock = (models[k] for k in ("detector", "embedder", "analyzer", "stock"))
    n = len(photos)
    runs = {i: [photos[(max(i, 0) * batch + k) % n] for k in range(batch)] for i in range(-2, repeats)}
    detections = {i: detector.detect(images) for i, images in runs.items()}

    def align(i: int) -> list[np.ndarray]:
        size, pad = embedder.chip_size, embedder.chip_padding
        return [
            align_faces(im, f, size=size, padding=pad)
            for im, f in zip(runs[i], detections[i], strict=True)
            if f
        ]

    aligned = {i: align(i) for i in runs}
    chips = {i: np.concatenate(c) if c else np.zeros((0, 150, 150, 3), np.uint8) for i, c in aligned.items()}
    timed = measure_interleaved(
        {
            "stock": lambda i: stock.detect(runs[i], landmarks=True),
            "ours": lambda i: analyzer.analyze(runs[i]),
            "detect": lambda i: detector.detect(runs[i]),
            "align": align,
            "embed": lambda i: embedder.embed(chips[i]) if len(chips[i]) else None,
        },
        repeats=repeats,
        warmup=2,
        sync=sync,
    )
    faces = sum(len(f) for i in range(repeats) for f in detections[i]) / (repeats * batch)
    out: dict[str, Any] = {"batch": batch, "faces_per_image": round(faces, 3)}
    for stage in STAGES:
        t = timed[stage]
        out[stage] = {
            **t.summary(),
            "ms_per_image": round(t.median_ms / batch, 4),
            "images_per_s": round(batch * 1000.0 / t.median_ms, 2),
        }
    out["ours_vs_stock_throughput"] = round(out["ours"]["images_per_s"] / out["stock"]["images_per_s"], 3)
    return out


def evaluate(rows: list[dict[str, Any]], on_gpu: bool) -> dict[str, Any]:
    """The three goals; not evaluated (value None) on a CPU run, which is no GPU figure."""
    b1 = next((r["ours"]["ms_per_image"] for r in rows if r["batch"] == 1), None)
    best_ours = max(r["ours"]["images_per_s"] for r in rows)
    best_stock = max(r["stock"]["images_per_s"] for r in rows)
    return {
        "ms_per_image_batch1": goal(b1 if on_gpu else None, GOAL_MS_BATCH1, at_most=True),
        "images_per_s_batched": goal(best_ours if on_gpu else None, GOAL_IMAGES_PER_S, at_most=False),
        "best_throughput_vs_stock_mtcnn": goal(
            round(best_ours / best_stock, 3) if on_gpu else None, GOAL_VS_STOCK, at_most=False
        ),
    }


def markdown(data: dict[str, Any]) -> str:
    rows = [
        [
            r["batch"],
            r["faces_per_image"],
            r["stock"]["images_per_s"],
            r["ours"]["images_per_s"],
            r["ours"]["ms_per_image"],
            r["ours_vs_stock_throughput"],
            r["detect"]["ms_per_image"],
            r["align"]["ms_per_image"],
            r["embed"]["ms_per_image"],
        ]
        for r in data["results"]
    ]
    headers = ["batch", "faces/img", "stock MTCNN img/s", "ours img/s", "ours ms/img", "ours / stock"]
    headers += ["detect ms/img", "align ms/img", "embed ms/img"]
    g = data["goals"]
    if data["device"] == "cpu":
        verdict = (
            "**CPU run (device=cpu): a smoke test of the script, NOT a GPU figure; goals not evaluated.**"
        )
    else:
        verdict = "\n".join(
            [
                f"- batch 1: {goal_text(g['ms_per_image_batch1'], 'ms/image')}",
                f"- batched: {goal_text(g['images_per_s_batched'], 'images/s')}",
                f"- vs stock MTCNN (best vs best): {goal_text(g['best_throughput_vs_stock_mtcnn'], 'x')}",
            ]
        )
    return (
        f"# Face pipeline on {data['device_name']}\n\n{data['images']} photos letterboxed to "
        f"{data['size']}x{data['size']}; medians over {data['repeats']} interleaved runs per batch "
        f"(two warm-up runs first).\n\n{md_table(headers, rows)}\n\n{verdict}"
    )


def main(args: argparse.Namespace) -> None:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = args.device == "cuda"
    batches = [int(b) for b in (args.batches or ("1,16,64,128" if on_gpu else "1,4")).split(",")]
    count = args.images or (max(512, 4 * max(batches)) if on_gpu else 8)
    repeats = args.repeats or (20 if on_gpu else 3)
    info = machine_info()
    photos = load_photos(faces_dir(), args.size, count)
    detector = FaceDetector(device=args.device, max_batch=max(batches))
    embedder = DlibResNetEmbedder(
        Path(args.weights) if args.weights else None, device=args.device, batch_size=args.embed_batch
    )
    models = {
        "detector": detector,
        "embedder": embedder,
        "analyzer": FaceAnalyzer(detector, embedder),
        "stock": MTCNN(
            min_face_size=detector.min_face_px,
            thresholds=list(DEFAULT_STAGE_THRESHOLDS),
            keep_all=True,
            device=torch.device(args.device),
        ).eval(),
    }
    sync = torch.cuda.synchronize if on_gpu else None
    rows = []
    for batch in batches:
        rows.append(bench_batch(batch, photos, models, repeats, sync))
        r = rows[-1]
        print(f"batch {batch:4d}: ours {r['ours']['images_per_s']:9.1f} img/s, stock "
              f"{r['stock']['images_per_s']:9.1f} img/s", flush=True)  # fmt: skip
    data = {
        "benchmark": "face_gpu",
        "device": args.device,
        "device_name": info["cuda_device"] if on_gpu else f"CPU ({info['cpu_model']})",
        "gpu_figure": on_gpu,
        "images": count,
        "size": args.size,
        "repeats": repeats,
        "settings": {
            "min_face_px": detector.min_face_px,
            "detector_max_batch": detector.max_batch,
            "embed_batch_size": args.embed_batch,
            "stage_thresholds": list(DEFAULT_STAGE_THRESHOLDS),
        },
        "results": rows,
        "goals": evaluate(rows, on_gpu),
        "machine": info,
    }
    name = "face_gpu" if on_gpu else "face_gpu_cpu"
    md = markdown(data)
    json_path, _ = write_results(name, data, md, Path(args.results_dir))
    print(md)
    print(f"wrote {json_path}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batches", help="comma-separated (default 1,16,64,128 on CUDA, 1,4 on CPU)")
    p.add_argument("--images", type=int, default=0, help="photos to cycle through (default 512 / 8)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per batch (default 20 / 3)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--embed-batch", type=int, default=256, help="DlibResNetEmbedder batch_size")
    p.add_argument("--weights", help="dlib_face_recognition_resnet_model_v1.dat (default: package copy)")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    return p.parse_args()


if __name__ == "__main__":
    main(parse())
