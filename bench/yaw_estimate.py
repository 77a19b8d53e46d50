"""Not a speed benchmark: the head-yaw estimate of ``detectors/liveness.py`` on the shared photos.

Every face MTCNN finds in ../shared/faces (LFW and group photos) is paired with the same face in
a mirrored copy of its photo (box IoU > 0.5 after mirroring the box); a mirrored face is turned
the other way by exactly as much, so ``yaw(mirror) = -yaw(original)`` and ``|yaw + yaw_mirror|``
measures the estimate's error from landmark noise and asymmetry (not its scale: no pose-labelled
photos are available offline). Also reported: the distribution of the estimated yaw, how many
faces each pose class gets under the default thresholds, and whether a face and its mirror get
mirrored classes.

Run: ``.venv/bin/python bench/yaw_estimate.py`` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from common import faces_dir, machine_info, md_table, repo_on_path, write_results
from PIL import Image, ImageOps

repo_on_path()

from consentry.detectors.detection import FaceDetector  # noqa: E402
from consentry.detectors.liveness import Pose, PoseThresholds, head_yaw_deg  # noqa: E402

MIRRORED = {Pose.left: Pose.right, Pose.right: Pose.left, Pose.front: Pose.front, None: None}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def measure(root: Path) -> list[dict[str, Any]]:
    detector = FaceDetector(device="cpu", min_face_px=20)
    rows = []
    for path in sorted((root / "lfw").glob("*/*.jpg")) + sorted((root / "groups").glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        faces, mirrored = detector.detect([image, ImageOps.mirror(image)])
        for face in faces:
            x1, y1, x2, y2 = face.box
            box = (image.width - x2, y1, image.width - x1, y2)
            twins = [m for m in mirrored if iou(m.box, box) > 0.5]
            rows.append(
                {
                    "photo": str(path.relative_to(root)),
                    "face_px": round(min(face.width, face.height)),
                    "yaw_deg": round(head_yaw_deg(face.landmarks), 2),
                    "mirror_yaw_deg": round(head_yaw_deg(twins[0].landmarks), 2) if twins else None,
                }
            )
    return rows


def summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": round(float(values.mean()), 2),
        "median": round(float(np.median(values)), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
        "max": round(float(values.max()), 2),
    }


def main() -> None:
    info = machine_info()
    rows = measure(faces_dir())
    paired = [r for r in rows if r["mirror_yaw_deg"] is not None]
    yaw = np.array([r["yaw_deg"] for r in rows])
    error = np.array([abs(r["yaw_deg"] + r["mirror_yaw_deg"]) for r in paired])
    lfw_error = np.array(
        [abs(r["yaw_deg"] + r["mirror_yaw_deg"]) for r in paired if r["photo"].startswith("lfw")]
    )
    thresholds = PoseThresholds()
    classes = [thresholds.classify(y) for y in yaw]
    counts = {
        (c.value if c else "dead band"): classes.count(c) for c in [Pose.left, Pose.front, Pose.right, None]
    }
    agree = sum(
        thresholds.classify(r["mirror_yaw_deg"]) is MIRRORED[thresholds.classify(r["yaw_deg"])]
        for r in paired
    )
    edges = list(range(-60, 61, 10))
    histogram = np.histogram(np.clip(yaw, -59.9, 59.9), bins=edges)[0].tolist()
    data: dict[str, Any] = {
        "faces": len(rows),
        "paired_with_mirror": len(paired),
        "mirror_error_deg": summary(error),
        "mirror_error_deg_lfw": summary(lfw_error),
        "yaw_percentiles_deg": {
            str(p): round(float(np.percentile(yaw, p)), 1) for p in (0, 5, 25, 50, 75, 95, 100)
        },
        "histogram": {"edges_deg": edges, "counts": histogram},
        "classes_default_thresholds": counts,
        "thresholds": {"front_max_deg": thresholds.front_max_deg, "turn_min_deg": thresholds.turn_min_deg},
        "mirror_class_agreement": round(agree / len(paired), 4),
        "rows": rows,
        "machine": info,
    }
    e, el = data["mirror_error_deg"], data["mirror_error_deg_lfw"]
    md = "\n\n".join(
        [
            "# Head-yaw estimate from MTCNN's five landmarks (detectors/liveness.py)",
            f"{len(rows)} faces in ../shared/faces ({len(paired)} also found in the mirrored photo). "
            "Error = |yaw + yaw of the mirrored face| (a mirrored face is turned the other way by as "
            "much); it measures noise and asymmetry, not the estimate's scale.",
            md_table(
                ["faces", "n", "mean error °", "median °", "p95 °", "max °"],
                [
                    ["all", len(error), e["mean"], e["median"], e["p95"], e["max"]],
                    ["LFW", len(lfw_error), el["mean"], el["median"], el["p95"], el["max"]],
                ],
            ),
            "Estimated yaw (positive: turned to the subject's left), faces per 10° bin:",
            md_table(
                [f"{a}..{a + 10}" for a in edges[:-1]],
                [histogram],
            ),
            f"Pose classes at the default thresholds (front |yaw| <= {thresholds.front_max_deg:g}°, "
            f"turn >= {thresholds.turn_min_deg:g}°): "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f". A face and its mirror get mirrored classes in {agree} of {len(paired)} pairs.",
        ]
    )
    json_path, md_path = write_results("yaw_estimate", data, md)
    print(md_path.read_text())
    print(f"written: {json_path}, {md_path}")


if __name__ == "__main__":
    main()
