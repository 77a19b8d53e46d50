"""CPU embedding speed: our PyTorch dlib ResNet against dlib itself, on the same aligned chips.

The chips are real: the centred face of each LFW photo, found by our MTCNN detector and cut by
``align_faces`` (what the gate feeds the embedder). Each (implementation, batch size) pair is
timed in a fresh subprocess of this script (``--worker``): on a 2-core machine, dlib's and
torch's thread pools in one process disturb each other and made torch's timings erratic. The
ratio is still taken within one invocation, over several rounds that alternate which side goes
first, so both sides see the same (shared, loaded) machine; each round's ratio is kept too.

dlib is called the way dlib offers: ``compute_face_descriptor(chip)`` at batch 1 and its list
form ``compute_face_descriptor([chips])`` for larger batches. Ours is
``DlibResNetEmbedder(device="cpu").embed(chips)``. The warm-up call of each worker also saves
its raw descriptors, so the report shows that both computed the same numbers.

Run: .venv/bin/python bench/embed_cpu.py [--batches 1,16,64] [--rounds 3] [--repeats N]
Writes bench/results/embed_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS_DIR, faces_dir, goal, machine_info, md_table, measure, repo_on_path, write_results

GOAL_MS_PER_FACE = 40.0
IMPLS = ("ours", "ours_1t", "dlib")


def load_chips(photos: Path) -> np.ndarray:
    """(N, 150, 150, 3) uint8: the centred face of every LFW photo, as the gate aligns it."""
    repo_on_path()
    from PIL import Image

    from consentry.detectors.align import align_faces
    from consentry.detectors.detection import FaceDetector

    detector = FaceDetector(device="cpu")
    chips = []
    for path in sorted(photos.glob("lfw/*/*.jpg")):
        image = Image.open(path).convert("RGB")
        faces = detector.detect([image])[0]
        if not faces:
            continue
        cx, cy = image.width / 2, image.height / 2
        face = min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)
        chips.append(align_faces(image, [face], size=150, padding=0.25)[0])
    if len(chips) < 16:
        raise SystemExit(f"only {len(chips)} LFW faces found under {photos}")
    return np.stack(chips)


def default_repeats(batch: int) -> int:
    """About 32 faces per cell and round, at least 3 runs: dlib takes ~0.1 s a face here."""
    return max(3, 32 // batch)


def worker(impl: str, batch: int, repeats: int, chips_path: Path, out_path: Path) -> dict[str, Any]:
    """Time one implementation at one batch size; runs in its own process."""
    chips = np.load(chips_path)
    n = len(chips)

    def batch_of(i: int) -> np.ndarray:
        # Warm-up (i < 0) takes the first chips; run i the (i+1)-th window, wrapping around.
        start = 0 if i < 0 else (i + 1) * batch
        return chips[[(start + k) % n for k in range(batch)]]

    batches = {i: batch_of(i) for i in range(-1, repeats)}
    t0 = time.perf_counter()
    if impl in ("ours", "ours_1t"):
        repo_on_path()
        import torch

        if impl == "ours_1t":  # one thread: what a core shared with other work gets reliably
            torch.set_num_threads(1)

        from consentry.detectors.embedders import DlibResNetEmbedder

        embedder = DlibResNetEmbedder(device="cpu", batch_size=batch)
        threads = torch.get_num_threads()

        def raw(x: np.ndarray) -> np.ndarray:
            return embedder.embed_raw(x)

        def run(i: int) -> object:
            return embedder.embed(batches[i])
    else:
        import dlib

        repo_on_path()
        from consentry.detectors.dlib_resnet import default_dlib_weights

        model = dlib.face_recognition_model_v1(str(default_dlib_weights()))
        threads = None

        def raw(x: np.ndarray) -> np.ndarray:
            if len(x) == 1:
                return np.array([model.compute_face_descriptor(x[0])], dtype=np.float32)
            return np.array([np.array(d) for d in model.compute_face_descriptor(list(x))], np.float32)

        def run(i: int) -> object:
            x = batches[i]
            return model.compute_face_descriptor(x[0] if batch == 1 else list(x))

    load_s = time.perf_counter() - t0
    np.save(out_path, raw(batches[-1]))  # warm-up call, and the parity sample
    cpu0, wall0 = time.process_time(), time.perf_counter()
    timing = measure(run, repeats=repeats, warmup=0)
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return {
        "impl": impl,
        "batch": batch,
        "torch_threads": threads,
        "model_load_s": round(load_s, 3),
        "ms_per_call": timing.summary(),
        "ms_per_face": round(timing.median_ms / batch, 3),
        "cores_busy": round(cpu_share, 2),  # CPU seconds per wall second while timed
    }


def spawn(impl: str, batch: int, repeats: int, chips: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", impl, "--batch", str(batch), "--repeats", str(repeats)]
    cmd += ["--chips", str(chips), "--descriptors", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {impl} batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parity(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    ratio = np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    return {
        "faces": len(cos),
        "cosine_min": round(float(cos.min()), 7),
        "norm_ratio_max_dev": float(np.abs(ratio - 1).max()),
    }


def cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (implementation, batch) over rounds: the median of the rounds' medians."""
    return {
        "ms_per_face": round(statistics.median(r["ms_per_face"] for r in runs), 3),
        "cores_busy": round(statistics.median(r["cores_busy"] for r in runs), 2),
        "rounds": runs,
    }


def main(args: argparse.Namespace) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    photos = faces_dir()
    info = machine_info()
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="embed_cpu_") as tmp:
        chips = load_chips(photos)
        chips_path = Path(tmp) / "chips.npy"
        np.save(chips_path, chips)
        # Rounds, and alternating who goes first, spread a shared machine's load over both.
        for rnd in range(args.rounds):
            for batch in batches:
                for impl in IMPLS[:: 1 if rnd % 2 == 0 else -1]:
                    repeats = args.repeats or default_repeats(batch)
                    got = spawn(impl, batch, repeats, chips_path, Path(tmp) / f"{impl}_{batch}.npy")
                    runs.setdefault((impl, batch), []).append(got)
                    print(
                        f"round {rnd} batch {batch:3d} {impl:4s}: {got['ms_per_face']:8.2f} ms/face",
                        flush=True,
                    )
        last = max(batches)
        check = parity(np.load(Path(tmp) / f"ours_{last}.npy"), np.load(Path(tmp) / f"dlib_{last}.npy"))
    rows: list[dict[str, Any]] = []
    for batch in batches:
        ours, ref = cell(runs[("ours", batch)]), cell(runs[("dlib", batch)])
        ours_1t = cell(runs[("ours_1t", batch)])
        ratios = [
            d["ms_per_face"] / o["ms_per_face"] for o, d in zip(ours["rounds"], ref["rounds"], strict=True)
        ]
        rows.append(
            {
                "batch": batch,
                "ours": ours,
                "ours_1_thread": ours_1t,
                "dlib": ref,
                "dlib_over_ours": round(ref["ms_per_face"] / ours["ms_per_face"], 3),
                "dlib_over_ours_per_round": [round(r, 3) for r in ratios],
                "goal": goal(ours["ms_per_face"], GOAL_MS_PER_FACE, at_most=True),
            }
        )
    data = {
        "benchmark": "embed_cpu",
        "what": "ms per face on 150 px aligned LFW chips: per cell, the median over rounds of the "
        "median over runs; every (implementation, batch, round) in its own subprocess",
        "chips": len(chips),
        "rounds": args.rounds,
        "goal_ms_per_face": GOAL_MS_PER_FACE,
        "parity_on_warmup_batch": check,
        "results": rows,
        "machine": info,
    }
    headers = ["batch", "ours ms/face", "ours 1 thread", "dlib ms/face", "dlib / ours", "per round"]
    headers += ["cores busy ours / dlib"]
    table = md_table(
        [*headers, "goal <= 40 ms"],
        [
            [
                r["batch"],
                r["ours"]["ms_per_face"],
                r["ours_1_thread"]["ms_per_face"],
                r["dlib"]["ms_per_face"],
                r["dlib_over_ours"],
                ", ".join(f"{x:.3g}" for x in r["dlib_over_ours_per_round"]),
                f"{r['ours']['cores_busy']:.2f} / {r['dlib']['cores_busy']:.2f}",
                "met" if r["goal"]["met"] else "NOT met",
            ]
            for r in rows
        ],
    )
    md = (
        f"# CPU embedding: DlibResNetEmbedder vs dlib\n\n{len(chips)} real aligned LFW chips; "
        f"median ms per face over {args.rounds} rounds; each cell of each round timed in its own "
        f"subprocess.\n\n{table}\n\n"
        f"Same numbers: on {check['faces']} faces, cosine(ours, dlib) >= {check['cosine_min']}, "
        f"descriptor length within {check['norm_ratio_max_dev']:.1e} of dlib's."
    )
    json_path, _ = write_results("embed_cpu", data, md, Path(args.results_dir))
    print(md)
    print(f"wrote {json_path}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--repeats", type=int, default=0, help="runs per cell and round (default ~32 faces)")
    p.add_argument("--rounds", type=int, default=3, help="fresh subprocesses per cell, alternating order")
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chips", help=argparse.SUPPRESS)
    p.add_argument("--descriptors", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse()
    if ns.worker:
        result = worker(ns.worker, ns.batch, ns.repeats or default_repeats(ns.batch), Path(ns.chips),
                        Path(ns.descriptors))  # fmt: skip
        print(json.dumps(result))
    else:
        main(ns)
