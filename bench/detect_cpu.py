"""CPU face detection: stock facenet-pytorch MTCNN vs our BatchedMTCNN, same photos, one run.

16 real photos (8 LFW portraits, 8 group photos) letterboxed to 512x512; both detectors
configured as ``FaceDetector`` configures stock MTCNN (min face 40 px, stage thresholds
0.6 / 0.7 / 0.7, factor 0.709). Batch 1 (one photo per call) and batch 16 (all in one call); a
run covers all 16 photos, median run / 16 = ms per image, timed round-robin
(``measure_interleaved``). Also checks that both give the same face count on every photo and
reports box IoU / landmark distance.

    .venv/bin/python bench/detect_cpu.py            (~2-4 min on 2 cores)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from PIL import Image, ImageOps

repo_on_path()

GOAL_RATIO = 3.0
SIDE = 512
MIN_FACE = 40


def photos(root: Path) -> list[Image.Image]:
    lfw = sorted((root / "lfw").glob("*/*.jpg"))[::13][:8]
    groups = sorted((root / "groups").glob("*.jpg"))[:8]
    return [ImageOps.pad(Image.open(p).convert("RGB"), (SIDE, SIDE)) for p in lfw + groups]


def parity(stock: Any, ours: Any, images: list[Image.Image]) -> dict[str, Any]:
    from torchvision.ops import box_iou

    counts_equal, ious, lm_dists, faces = 0, [], [], 0
    for im in images:
        b1, _, l1 = stock.detect([im], landmarks=True)
        b2, _, l2 = ours.detect([im])
        n1 = 0 if b1[0] is None else len(b1[0])
        n2 = 0 if b2[0] is None else len(b2[0])
        counts_equal += n1 == n2
        faces += n1
        if n1 and n2:
            iou = box_iou(
                torch.as_tensor(np.asarray(b1[0], np.float64)), torch.as_tensor(b2[0], dtype=torch.float64)
            )
            best = iou.max(1)
            for i, (v, j) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True)):
                ious.append(v)
                lm_dists.append(float(np.abs(np.asarray(l1[0][i], np.float64) - l2[0][j]).max()))
    return {
        "photos": len(images),
        "photos_same_count": counts_equal,
        "stock_faces": faces,
        "min_box_iou": round(min(ious), 6) if ious else None,
        "max_landmark_px": round(max(lm_dists), 6) if lm_dists else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--repeats-b1", type=int, default=4)
    parser.add_argument("--repeats-b16", type=int, default=4)
    args = parser.parse_args()

    from facenet_pytorch import MTCNN

    from consentry.detectors.mtcnn_batched import BatchedMTCNN

    info = machine_info()
    images = photos(faces_dir())
    stock = MTCNN(
        min_face_size=MIN_FACE,
        thresholds=[0.6, 0.7, 0.7],
        keep_all=True,
        select_largest=False,
        post_process=False,
        device="cpu",
    ).eval()
    ours = BatchedMTCNN(min_face_size=MIN_FACE, device="cpu")
    check = parity(stock, ours, images)
    n = len(images)

    results: dict[str, Any] = {}
    rows = []
    for batch, repeats in ((1, args.repeats_b1), (n, args.repeats_b16)):

        def call(det: Any, i: int, batch: int = batch) -> object:
            # One run = all photos: one call each (batch 1) or one call for all (batch 16).
            if batch == 1:
                return [det.detect([im]) for im in images]
            return det.detect(images)

        timings = measure_interleaved(
            {"stock": lambda i: call(stock, i), "ours": lambda i: call(ours, i)}, repeats=repeats, warmup=1
        )
        stock_ms = timings["stock"].median_ms / n
        ours_ms = timings["ours"].median_ms / n
        ratio = stock_ms / ours_ms
        g = goal(round(ratio, 3), GOAL_RATIO, at_most=False)
        results[f"batch_{batch}"] = {
            "stock_ms_per_image": round(stock_ms, 3),
            "ours_ms_per_image": round(ours_ms, 3),
            "ratio": round(ratio, 3),
            "stock_call": timings["stock"].summary(),
            "ours_call": timings["ours"].summary(),
            "goal": g,
        }
        rows.append([batch, stock_ms, ours_ms, ratio, "met" if g["met"] else "NOT met"])
        print(f"batch {batch}: stock {stock_ms:.1f} ms/image, ours {ours_ms:.1f}, x{ratio:.2f}")

    data = {
        "settings": {
            "images": n,
            "side": SIDE,
            "min_face_size": MIN_FACE,
            "thresholds": [0.6, 0.7, 0.7],
            "factor": 0.709,
            "repeats": {"batch_1": args.repeats_b1, f"batch_{n}": args.repeats_b16},
        },
        "machine": info,
        "parity": check,
        "results": results,
    }
    md = "\n".join(
        [
            "# CPU face detection: BatchedMTCNN vs stock facenet-pytorch MTCNN",
            "",
            f"{n} real photos (8 LFW, 8 groups) letterboxed to {SIDE}x{SIDE}, min face {MIN_FACE} px; "
            "a run covers all 16 photos (one call each, or one call); median run / 16 = ms per image; "
            "variants interleaved in one run.",
            "",
            md_table(
                ["batch", "stock ms/image", "ours ms/image", "stock / ours", f"goal >= {GOAL_RATIO:g}x"], rows
            ),
            "",
            f"Parity on these photos: same face count on {check['photos_same_count']}/{check['photos']}, "
            f"{check['stock_faces']} faces, min box IoU {check['min_box_iou']}, "
            f"max landmark difference {check['max_landmark_px']} px.",
            "",
            "; ".join(goal_text(results[k]["goal"], "x") for k in results),
        ]
    )
    json_path, md_path = write_results("detect_cpu", data, md, args.results_dir)
    print(md)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
