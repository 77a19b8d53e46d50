"""CPU face detection: stock facenet-pytorch MTCNN vs our BatchedMTCNN, same photos, one run;
then our whole face pass (detect + align + embed) per image.

16 real photos (8 LFW portraits, 8 group photos) letterboxed to 512x512; both detectors
configured as ``FaceDetector`` configures stock MTCNN (min face 40 px, stage thresholds
0.6 / 0.7 / 0.7, factor 0.709). Batch 1 (one photo per call) and batch 16 (all in one call); a
run covers all 16 photos; stock and ours are timed round-robin, run by run. Each run records
wall time and the process's CPU time: with one torch thread (the default here, ``--threads``)
CPU time is the work done, while wall time on a shared machine also counts the time the
process waited for a core. Ratios are taken of the medians.

Parity on the same photos: face count per photo, box IoU and landmark distance of every stock
face to its best-matching face of ours (the full parity check over all shared photos is
tests/detectors/test_mtcnn_batched.py).

The face pass: ``FaceAnalyzer.analyze`` (FaceDetector, align_faces, DlibResNetEmbedder, what
the gate runs) at batch 1 and 16, and its three parts timed separately on the same photos.

    .venv/bin/python bench/detect_cpu.py            (~3 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
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


def timed_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU milliseconds of each variant, run i of each in turn (the first
    variant rotating), after ``warmup`` untimed runs of each."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            out[name]["cpu"].append((time.process_time() - cpu) * 1000.0)
            out[name]["wall"].append((time.perf_counter() - wall) * 1000.0)
    return out


def summary(samples: list[float], per: int) -> dict[str, float]:
    return {
        "median_ms_per_image": round(statistics.median(samples) / per, 3),
        "min_ms_per_image": round(min(samples) / per, 3),
        "max_ms_per_image": round(max(samples) / per, 3),
    }


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
        "share_iou_ge_0.95": round(float(np.mean(np.array(ious) >= 0.95)), 4) if ious else None,
        "max_landmark_px": round(max(lm_dists), 6) if lm_dists else None,
        "share_landmark_le_1.5px": round(float(np.mean(np.array(lm_dists) <= 1.5)), 4) if lm_dists else None,
    }


def detection(images: list[Image.Image], repeats: int) -> tuple[dict[str, Any], list[list[Any]]]:
    """Stock vs ours at batch 1 and batch 16, interleaved."""
    from facenet_pytorch import MTCNN

    from consentry.detectors.mtcnn_batched import BatchedMTCNN

    stock = MTCNN(
        min_face_size=MIN_FACE,
        thresholds=[0.6, 0.7, 0.7],
        keep_all=True,
        select_largest=False,
        post_process=False,
        device="cpu",
    ).eval()
    ours = BatchedMTCNN(min_face_size=MIN_FACE, device="cpu")
    n = len(images)
    results: dict[str, Any] = {"parity": parity(stock, ours, images)}
    rows = []
    for batch in (1, n):

        def call(det: Any, batch: int = batch) -> object:
            # One run = all photos: one call each (batch 1) or one call for all (batch 16).
            if batch == 1:
                return [det.detect([im]) for im in images]
            return det.detect(images)

        t = timed_round_robin({"stock": lambda: call(stock), "ours": lambda: call(ours)}, repeats)
        entry: dict[str, Any] = {}
        for clock in ("cpu", "wall"):
            s, o = (summary(t[k][clock], n) for k in ("stock", "ours"))
            ratio = round(s["median_ms_per_image"] / o["median_ms_per_image"], 3)
            entry[clock] = {
                "stock": s,
                "ours": o,
                "ratio": ratio,
                "goal": goal(ratio, GOAL_RATIO, at_most=False),
            }
            rows.append(
                [
                    batch,
                    clock,
                    s["median_ms_per_image"],
                    o["median_ms_per_image"],
                    ratio,
                    "met" if ratio >= 3 else "NOT met",
                ]
            )
        results[f"batch_{batch}"] = entry
        cpu = entry["cpu"]
        print(
            f"batch {batch}: cpu stock {cpu['stock']['median_ms_per_image']:.1f} / ours "
            f"{cpu['ours']['median_ms_per_image']:.1f} ms = x{cpu['ratio']:.2f}; "
            f"wall x{entry['wall']['ratio']:.2f}",
            flush=True,
        )
    return results, rows


def face_pass(images: list[Image.Image], repeats: int) -> tuple[dict[str, Any], list[list[Any]]]:
    """Ours end to end per 512x512 image: FaceAnalyzer.analyze, and its parts on the same photos."""
    from consentry.detectors.align import align_faces
    from consentry.detectors.analyzer import FaceAnalyzer
    from consentry.detectors.detection import FaceDetector
    from consentry.detectors.embedders import DlibResNetEmbedder

    detector = FaceDetector(device="cpu", min_face_px=MIN_FACE)
    embedder = DlibResNetEmbedder(device="cpu")
    analyzer = FaceAnalyzer(detector, embedder)
    n = len(images)
    results: dict[str, Any] = {}
    rows = []
    for batch in (1, n):
        groups = [images[i : i + batch] for i in range(0, n, batch)]
        detections = [detector.detect(g) for g in groups]
        pairs = [(im, f) for g, d in zip(groups, detections, strict=True) for im, f in zip(g, d, strict=True)]
        chips = [
            c
            for c in (np.concatenate(aligned) for aligned in _aligned(groups, detections, align_faces))
            if len(c)
        ]
        t = timed_round_robin(
            _face_pass_parts(analyzer, detector, embedder, align_faces, groups, pairs, chips), repeats
        )
        faces = sum(len(f) for _, f in pairs)
        entry: dict[str, Any] = {
            stage: {clock: summary(t[stage][clock], n) for clock in ("cpu", "wall")} for stage in t
        }
        entry["faces_per_image"] = round(faces / n, 3)
        results[f"batch_{batch}"] = entry
        rows.append(
            [batch, faces / n]
            + [entry[s]["cpu"]["median_ms_per_image"] for s in ("detect", "align", "embed", "total")]
            + [entry["total"]["wall"]["median_ms_per_image"]]
        )
        print(f"face pass batch {batch}: {rows[-1]}", flush=True)
    return results, rows


def _face_pass_parts(
    analyzer: Any,
    detector: Any,
    embedder: Any,
    align: Any,
    groups: list[list[Image.Image]],
    pairs: list[tuple[Image.Image, Any]],
    chips: list[np.ndarray],
) -> dict[str, Callable[[], object]]:
    """The face pass and its three parts, each over all photos (one call per group)."""
    return {
        "total": lambda: [analyzer.analyze(g) for g in groups],
        "detect": lambda: [detector.detect(g) for g in groups],
        "align": lambda: [align(im, f) for im, f in pairs if f],
        "embed": lambda: [embedder.embed(c) for c in chips],
    }


def _aligned(
    groups: list[list[Image.Image]], detections: list[list[Any]], align: Any
) -> list[list[np.ndarray]]:
    # Per call group, the chips of all its faces (what one embedder call gets).
    out = []
    for g, d in zip(groups, detections, strict=True):
        out.append(
            [align(im, f) for im, f in zip(g, d, strict=True) if f] or [np.zeros((0, 150, 150, 3), np.uint8)]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant and batch")
    parser.add_argument("--face-repeats", type=int, default=3, help="timed runs of the face pass")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: steady on a loaded shared machine; 2 stall when a core is busy)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    images = photos(faces_dir())
    det, det_rows = detection(images, args.repeats)
    fp, fp_rows = face_pass(images, args.face_repeats)
    data = {
        "settings": {
            "images": len(images),
            "side": SIDE,
            "min_face_size": MIN_FACE,
            "thresholds": [0.6, 0.7, 0.7],
            "factor": 0.709,
            "repeats": args.repeats,
            "face_repeats": args.face_repeats,
            "torch_threads": args.threads,
            "malloc": "glibc thresholds pinned by BatchedMTCNN (mmap 32 MB, trim 64 MB), stock included",
        },
        "machine": info,
        "parity": det.pop("parity"),
        "detection": det,
        "face_pass": fp,
    }
    check = data["parity"]
    md = "\n".join(
        [
            "# CPU face detection: BatchedMTCNN vs stock facenet-pytorch MTCNN",
            "",
            f"{len(images)} real photos (8 LFW, 8 groups) letterboxed to {SIDE}x{SIDE}, min face {MIN_FACE} "
            f"px, {args.threads} torch thread(s); a run covers all 16 photos (one call each, or one call); "
            f"median of {args.repeats} runs / 16 = ms per image; stock and ours interleaved run by run. "
            "CPU = process CPU time (the work), wall = elapsed (with the waits for a core on a shared "
            "machine).",
            "",
            md_table(
                [
                    "batch",
                    "clock",
                    "stock ms/image",
                    "ours ms/image",
                    "stock / ours",
                    f"goal >= {GOAL_RATIO:g}x",
                ],
                det_rows,
            ),
            "",
            f"Parity on these photos: same face count on {check['photos_same_count']}/{check['photos']}, "
            f"{check['stock_faces']} faces, min box IoU {check['min_box_iou']}, "
            f"max landmark difference {check['max_landmark_px']} px.",
            "",
            "; ".join(
                f"batch {k[6:]} {c}: " + goal_text(v[c]["goal"], "x")
                for k, v in det.items()
                for c in ("cpu", "wall")
            ),
            "",
            "## Our face pass per 512x512 image",
            "",
            "FaceAnalyzer.analyze (FaceDetector + align_faces + DlibResNetEmbedder), what the gate runs.",
            "",
            f"Median of {args.face_repeats} runs; parts timed separately on the same photos.",
            "",
            md_table(
                [
                    "batch",
                    "faces/image",
                    "detect ms (cpu)",
                    "align ms (cpu)",
                    "embed ms (cpu)",
                    "total ms (cpu)",
                    "total ms (wall)",
                ],
                fp_rows,
            ),
        ]
    )
    json_path, md_path = write_results("detect_cpu", data, md, args.results_dir)
    print(md)
    print(f"wrote {json_path} and {md_path} (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
