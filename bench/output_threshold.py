"""Choose the default ``output_match_threshold`` from a PROXY of generation loss.

    .venv/bin/python bench/output_threshold.py [--max-photos N] [--results-dir DIR]

Writes bench/results/output_threshold.{json,md} and prints the recommendation.

``output_match_threshold`` is how much like the subject a face in a *generated* output must be;
protection of other identities keeps ``match_threshold``. A generated likeness scores lower against
the enrollment photos than a held-out real photo does. No trained generator exists offline, so the
loss is modelled by a deterministic image chain (``PROXY``): what a latent-diffusion round trip does
to a face at its crudest (the VAE latent is 1/8 resolution, its decoder smooths, outputs are
re-encoded, colours drift). It is a proxy, not a generator: it blurs identity but invents nothing.

Protocol, on ``faces/lfw`` (``DIR/<person>/<photo>``, as ``consentry calibrate``):

- Enrollment: each person's photos (sorted by name) in consecutive triples (folds 0-2, 3-5, 6-8);
  a triple becomes that person's templates for the fold when ``enrollment_templates`` accepts it
  with the gate's settings (one face >= ``min_enroll_face_px``, consistent at ``match_threshold``).
- Scores: per fold, one ``IdentityIndex`` of everyone's templates; a photo's score against a person
  is ``IdentityScores.of`` (the max cosine over that person's templates), the value
  ``judge_outputs`` compares with ``output_match_threshold``. The scored face is
  ``calibration_run.pick_face``'s (the centred one, LFW's convention).
- genuine: the person's photos outside the fold's triple; proxy genuine: the same photos through
  the proxy chain (and through each step alone); impostor: every photo of every other enrolled
  person, original and through the proxy chain. A photo whose face is no longer detected counts as
  not passing (genuine) / not accepted (impostor) and is reported.

Pick: the LOWEST candidate (0.80..0.95, step 0.01) whose false-accept rate on the real impostors
is 0 (else <= its rate at ``match_threshold``), provided the proxy impostors (other people's photos
through the same chain: a degraded face of someone else) are accepted no more often than at
``match_threshold``: protection does not weaken, on real photos nor on degraded ones.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS_DIR, faces_dir, machine_info, md_table, repo_on_path, write_results
from PIL import Image, ImageFilter

repo_on_path()
from consentry.detectors.analyzer import AnalyzedImage, FaceAnalyzer  # noqa: E402
from consentry.detectors.calibration_run import BATCH, Photo, pick_face, scan_photos  # noqa: E402
from consentry.detectors.enrollment import enrollment_templates  # noqa: E402
from consentry.detectors.images import decode_image  # noqa: E402
from consentry.detectors.index import IdentityIndex  # noqa: E402
from consentry.gateway.wiring import build_analyzer  # noqa: E402
from consentry.policies.config import Settings  # noqa: E402
from consentry.policies.errors import BadInputError  # noqa: E402

NAME = "output_threshold"
ENROLL_PHOTOS = 3
CANDIDATES = tuple(round(0.80 + 0.01 * i, 2) for i in range(16))  # 0.80 .. 0.95

# --- the generation proxy --------------------------------------------------------------------
DOWNSCALE = 8  # the VAE latent is 1/8 of the image side
BLUR_SIGMA = 1.0  # px, PIL GaussianBlur radius (= standard deviation)
JPEG_QUALITY = 70
# Per-channel gain and offset (R, G, B): a slight warm drift, as VAE decoders show.
COLOUR_GAIN = (1.03, 1.0, 0.97)
COLOUR_OFFSET = (4.0, 0.0, -4.0)


def downscale(im: Image.Image, factor: int = DOWNSCALE) -> Image.Image:
    small = (max(1, round(im.width / factor)), max(1, round(im.height / factor)))
    return im.resize(small, Image.Resampling.BICUBIC).resize(im.size, Image.Resampling.BICUBIC)


def blur(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(BLUR_SIGMA))


def jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert("RGB")


def colour(im: Image.Image) -> Image.Image:
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    shifted = rgb * np.asarray(COLOUR_GAIN, np.float32) + np.asarray(COLOUR_OFFSET, np.float32)
    return Image.fromarray(np.clip(np.rint(shifted), 0, 255).astype(np.uint8))


def chain(im: Image.Image) -> Image.Image:
    """THE proxy: downscale x8 + bicubic back up, blur, JPEG, colour shift (in that order)."""
    return colour(jpeg(blur(downscale(im))))


def chain_x4(im: Image.Image) -> Image.Image:
    """Sensitivity only (never used for the pick): the chain with a x4 instead of x8 downscale."""
    return colour(jpeg(blur(downscale(im, 4))))


PROXY = "chain"
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda im: im,
    "downscale_x8": downscale,
    "blur": blur,
    "jpeg70": jpeg,
    "colour": colour,
    PROXY: chain,
    "chain_x4": chain_x4,
}
PROXY_STEPS = (
    f"downscale by {DOWNSCALE} (bicubic, side rounded) and back up to the original size (bicubic)",
    f"Gaussian blur sigma {BLUR_SIGMA} px (PIL GaussianBlur)",
    f"JPEG quality {JPEG_QUALITY} (PIL, default subsampling)",
    f"colour shift: RGB gain {COLOUR_GAIN}, offset {COLOUR_OFFSET}, clipped to 0..255",
)
PROXY_DEFINITION: dict[str, Any] = {
    "name": PROXY,
    "label": "PROXY of latent-diffusion generation loss (no generator was run)",
    "steps": list(PROXY_STEPS),
    "deterministic": True,
    "single_step_variants": ["downscale_x8", "blur", "jpeg70", "colour"],
    "sensitivity_variants": {"chain_x4": "the same chain with a x4 downscale; not used for the pick"},
}


@dataclass(frozen=True, slots=True)
class Embedded:
    """One face per photo and variant (None: no face detected)."""

    photos: tuple[Photo, ...]
    analyzed: tuple[AnalyzedImage, ...]  # original photos, for enrollment
    vectors: dict[str, list[np.ndarray | None]]  # variant -> per photo


def embed_all(photos: Sequence[Photo], analyzer: FaceAnalyzer, settings: Settings) -> Embedded:
    dim = analyzer.embedder.dim
    vectors: dict[str, list[np.ndarray | None]] = {v: [] for v in VARIANTS}
    analyzed_orig: list[AnalyzedImage] = []
    images = [
        decode_image(
            p.path.read_bytes(), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        for p in photos
    ]
    for variant, fn in VARIANTS.items():
        start = time.perf_counter()
        for lo in range(0, len(images), BATCH):
            batch = [fn(im) for im in images[lo : lo + BATCH]]
            for image, analyzed in zip(batch, analyzer.analyze(batch), strict=True):
                if variant == "original":
                    analyzed_orig.append(analyzed)
                if analyzed.faces:
                    vec = analyzed.embeddings[pick_face(analyzed.faces, image.size)]
                    vectors[variant].append(np.asarray(vec, np.float32).reshape(dim))
                else:
                    vectors[variant].append(None)
        print(f"  embedded {variant}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return Embedded(tuple(photos), tuple(analyzed_orig), vectors)


@dataclass(frozen=True, slots=True)
class Fold:
    number: int
    enrolled: dict[str, tuple[int, ...]]  # person -> photo indices of the enrollment triple
    refused: dict[str, str]  # person -> why enrollment refused the triple


def enroll_folds(emb: Embedded, settings: Settings, dim: int) -> tuple[list[Fold], dict[str, np.ndarray]]:
    """Per fold, each person's triple accepted by ``enrollment_templates``; and their templates."""
    by_person: dict[str, list[int]] = {}
    for i, p in enumerate(emb.photos):
        by_person.setdefault(p.person, []).append(i)
    empty = IdentityIndex([], np.zeros((0, dim), np.float32))
    n_folds = max(len(v) for v in by_person.values()) // ENROLL_PHOTOS
    folds, templates = [], {}
    for f in range(n_folds):
        enrolled: dict[str, tuple[int, ...]] = {}
        refused: dict[str, str] = {}
        for person, idx in by_person.items():
            triple = tuple(idx[f * ENROLL_PHOTOS : (f + 1) * ENROLL_PHOTOS])
            if len(triple) < ENROLL_PHOTOS or len(idx) <= ENROLL_PHOTOS:
                continue  # not enough photos for this fold plus a held-out one
            try:
                t = enrollment_templates(
                    [emb.analyzed[i] for i in triple],
                    min_photos=settings.min_enroll_photos,
                    min_face_px=settings.min_enroll_face_px,
                    threshold=settings.match_threshold,
                    existing=empty,
                )
            except BadInputError as exc:
                refused[person] = str(exc)
                continue
            enrolled[person] = triple
            templates[f"{f}:{person}"] = t
        folds.append(Fold(f, enrolled, refused))
    return folds, templates


@dataclass(slots=True)
class ScoreSet:
    """Scores of one kind (genuine / impostor) for one variant; None = no face detected."""

    scores: list[float]
    undetected: int = 0

    @property
    def total(self) -> int:
        return len(self.scores) + self.undetected

    def passing(self, threshold: float) -> int:
        return int(np.count_nonzero(np.asarray(self.scores, np.float64) >= threshold))

    def rate(self, threshold: float) -> float:
        return self.passing(threshold) / self.total if self.total else float("nan")

    def summary(self) -> dict[str, Any]:
        s = np.asarray(self.scores, np.float64)
        out: dict[str, Any] = {"scored": len(self.scores), "undetected": self.undetected, "total": self.total}
        if s.size:
            out |= {
                "min": float(s.min()),
                "p05": float(np.percentile(s, 5)),
                "median": float(np.median(s)),
                "mean": float(s.mean()),
                "max": float(s.max()),
            }
        return out


def score(emb: Embedded, folds: Sequence[Fold], templates: dict[str, np.ndarray]) -> dict[str, ScoreSet]:
    """``genuine:<variant>`` for every variant, ``impostor:<v>`` for ``IMPOSTOR_VARIANTS``."""
    sets = {f"genuine:{v}": ScoreSet([]) for v in VARIANTS}
    sets |= {f"impostor:{v}": ScoreSet([]) for v in IMPOSTOR_VARIANTS}
    for fold in folds:
        ids = [p for p in fold.enrolled for _ in range(ENROLL_PHOTOS)]
        index = IdentityIndex(ids, np.concatenate([templates[f"{fold.number}:{p}"] for p in fold.enrolled]))
        for variant, vecs in emb.vectors.items():
            kinds = ["genuine"] + (["impostor"] if variant in IMPOSTOR_VARIANTS else [])
            present = [(i, v) for i, v in enumerate(vecs) if v is not None]
            rows = [i for i, _ in present]
            table = index.scores(np.stack([v for _, v in present])) if present else None
            row_of = {i: r for r, i in enumerate(rows)}
            for i, photo in enumerate(emb.photos):
                for person, triple in fold.enrolled.items():
                    kind = "genuine" if photo.person == person else "impostor"
                    if kind not in kinds or (kind == "genuine" and i in triple):
                        continue
                    target = sets[f"{kind}:{variant}"]
                    if i not in row_of or table is None:
                        target.undetected += 1
                    else:
                        target.scores.append(table.of(row_of[i], person))
    return sets


def sweep(sets: dict[str, ScoreSet], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    for t in thresholds:
        row: dict[str, Any] = {"threshold": t}
        for key, s in sets.items():
            row[key] = {"pass": s.passing(t), "of": s.total, "rate": s.rate(t)}
        rows.append(row)
    return rows


IMPOSTOR_VARIANTS = ("original", PROXY, "chain_x4")


def operating(sets: dict[str, ScoreSet], t: float) -> dict[str, Any]:
    g, p = sets["genuine:original"], sets[f"genuine:{PROXY}"]
    imp, pimp = sets["impostor:original"], sets[f"impostor:{PROXY}"]
    return {
        "threshold": t,
        "genuine_pass": g.rate(t),
        "genuine_counts": [g.passing(t), g.total],
        "proxy_genuine_pass": p.rate(t),
        "proxy_genuine_counts": [p.passing(t), p.total],
        "impostor_far": imp.rate(t),
        "impostor_counts": [imp.passing(t), imp.total],
        "proxy_impostor_far": pimp.rate(t),
        "proxy_impostor_counts": [pimp.passing(t), pimp.total],
    }


def recommend(sets: dict[str, ScoreSet], match_threshold: float, placeholder: float) -> dict[str, Any]:
    """The rule (module doc): FAR 0 on the real impostors (else <= their rate at
    ``match_threshold``), and proxy impostors no more often accepted than at ``match_threshold``."""
    imp, pimp = sets["impostor:original"], sets[f"impostor:{PROXY}"]
    guard = pimp.rate(match_threshold)
    ok = [t for t in CANDIDATES if pimp.rate(t) <= guard]
    zero = [t for t in ok if imp.rate(t) == 0.0]
    if zero:
        chosen = zero[0]
        rule = (
            "lowest candidate with impostor FAR 0 whose proxy-impostor FAR is <= its rate at "
            f"match_threshold ({guard:.4g})"
        )
    else:
        limit = imp.rate(match_threshold)
        chosen = next(t for t in ok if imp.rate(t) <= limit)
        rule = (
            f"no candidate reaches impostor FAR 0; lowest with impostor FAR <= {limit:.4g} and "
            f"proxy-impostor FAR <= {guard:.4g} (the rates at match_threshold)"
        )
    plain = [t for t in CANDIDATES if imp.rate(t) == 0.0]
    both = [t for t in CANDIDATES if imp.rate(t) == 0.0 and pimp.rate(t) == 0.0]
    p = sets[f"genuine:{PROXY}"]
    return {
        "output_match_threshold": chosen,
        "rule": rule,
        "lowest_far0_original_impostors_only": plain[0] if plain else None,
        "lowest_far0_original_and_proxy_impostors": both[0] if both else None,
        "at_recommended": operating(sets, chosen),
        "at_match_threshold": operating(sets, match_threshold),
        "at_placeholder": operating(sets, placeholder),
        "proxy_pass_gain_points": 100 * (p.rate(chosen) - p.rate(match_threshold)),
    }


def cell(s: ScoreSet, t: float) -> str:
    return f"{100 * s.rate(t):.1f}% ({s.passing(t)}/{s.total})"


def markdown(data: dict[str, Any], sets: dict[str, ScoreSet], match_threshold: float) -> str:
    rec = data["recommendation"]
    chosen = rec["output_match_threshold"]
    shown = sorted({*CANDIDATES, match_threshold})
    rows = [
        [
            f"**{t:.2f}**" if t in (chosen, match_threshold) else f"{t:.2f}",
            cell(sets["genuine:original"], t),
            cell(sets[f"genuine:{PROXY}"], t),
            cell(sets["impostor:original"], t),
            cell(sets[f"impostor:{PROXY}"], t),
        ]
        for t in shown
    ]
    table = md_table(
        ["threshold", "genuine pass", "PROXY genuine pass", "impostor FAR", "PROXY impostor FAR"], rows
    )

    def imp(v: str, t: float) -> str:
        key = f"impostor:{v}"
        return cell(sets[key], t) if key in sets else "-"

    at = [match_threshold] + ([chosen] if chosen != match_threshold else [])
    steps = md_table(
        ["variant"]
        + [f"genuine pass @ {t:.2f}" for t in at]
        + ["median genuine score", f"impostor FAR @ {match_threshold:.2f}", "no face"],
        [
            [v]
            + [cell(sets[f"genuine:{v}"], t) for t in at]
            + [
                f"{sets[f'genuine:{v}'].summary().get('median', float('nan')):.4f}",
                imp(v, match_threshold),
                sets[f"genuine:{v}"].undetected,
            ]
            for v in VARIANTS
        ],
    )
    c = data["counts"]
    a, m, ph = rec["at_recommended"], rec["at_match_threshold"], rec["at_placeholder"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    def frac(counts: Sequence[int]) -> str:
        return f"{counts[0]}/{counts[1]}"

    return f"""# output_match_threshold from a generation PROXY

**Proxy, not a generator.** No generated image was scored: held-out real photos were passed
through `{PROXY}` = {"; ".join(PROXY_STEPS)}. Produced by `bench/output_threshold.py`.

{c["people"]} LFW people, {c["photos"]} photos ({c["photos_per_person_cap"] or "no"} cap per person),
{c["folds"]} enrollment folds of {ENROLL_PHOTOS} photos ({c["enrollments"]} enrollments accepted by
`enrollment_templates`, {c["enrollments_refused"]} refused). Score = max cosine over the person's
templates (`IdentityScores.of`); pass = score >= threshold. Genuine = the person's other photos;
impostor = every photo of every other enrolled person (PROXY impostor: the same through the chain).

{table}

**Recommended `output_match_threshold` = {chosen:.2f}**: {rec["rule"]}.
At {chosen:.2f}: proxy genuine pass {pct(a["proxy_genuine_pass"])} vs {pct(m["proxy_genuine_pass"])} at
`match_threshold` {match_threshold:.2f} ({rec["proxy_pass_gain_points"]:+.1f} points); impostor FAR
{a["impostor_counts"][0]}/{a["impostor_counts"][1]}, proxy impostor FAR
{a["proxy_impostor_counts"][0]}/{a["proxy_impostor_counts"][1]}. Lowest candidate with FAR 0 on the
real impostors alone: {rec["lowest_far0_original_impostors_only"]}; on real and proxy impostors:
{rec["lowest_far0_original_and_proxy_impostors"]}. The placeholder {ph["threshold"]:.2f} would pass
{pct(ph["proxy_genuine_pass"])} of proxy genuines but accept {frac(ph["impostor_counts"])} real
impostors ({pct(ph["impostor_far"])}) and {frac(ph["proxy_impostor_counts"])} proxy impostors
({pct(ph["proxy_impostor_far"])}): the proxy raises other people's scores against the subject while
it lowers the subject's own, so on it a lower threshold buys likeness passes only with false accepts.

Each proxy step alone:

{steps}
"""


def cap_photos(photos: Sequence[Photo], cap: int) -> list[Photo]:
    """The first ``cap`` photos of each person (``scan_photos`` sorts them by name)."""
    kept: dict[str, int] = {}
    out = []
    for p in photos:
        kept[p.person] = kept.get(p.person, 0) + 1
        if kept[p.person] <= cap:
            out.append(p)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-photos", type=int, default=None, help="cap photos per person (sorted by name)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    info = machine_info()
    settings = Settings(device="cpu")
    lfw = faces_dir() / "lfw"
    photos = list(scan_photos(lfw))
    if args.max_photos:
        photos = cap_photos(photos, args.max_photos)
    start = time.perf_counter()
    analyzer = build_analyzer(settings)
    emb = embed_all(photos, analyzer, settings)
    folds, templates = enroll_folds(emb, settings, analyzer.embedder.dim)
    sets = score(emb, folds, templates)
    thresholds = sorted({*CANDIDATES, settings.match_threshold})
    rec = recommend(sets, settings.match_threshold, settings.output_match_threshold)
    people = {p.person for p in photos}
    data: dict[str, Any] = {
        "proxy": PROXY_DEFINITION,
        "settings": {
            "match_threshold": settings.match_threshold,
            "output_match_threshold_placeholder": settings.output_match_threshold,
            "min_face_px": settings.min_face_px,
            "min_enroll_face_px": settings.min_enroll_face_px,
            "embedder": analyzer.embedder.name,
            "device": "cpu",
        },
        "faces": "faces/lfw",
        "counts": {
            "people": len(people),
            "photos": len(photos),
            "photos_per_person": {p: sum(q.person == p for q in photos) for p in sorted(people)},
            "photos_per_person_cap": args.max_photos,
            "folds": len(folds),
            "enrollments": sum(len(f.enrolled) for f in folds),
            "enrollments_refused": sum(len(f.refused) for f in folds),
            "sets": {k: {"total": s.total, "undetected": s.undetected} for k, s in sets.items()},
        },
        "folds": [
            {
                "fold": f.number,
                "enrolled": {p: [emb.photos[i].path.name for i in t] for p, t in f.enrolled.items()},
                "refused": f.refused,
            }
            for f in folds
        ],
        "candidates": list(CANDIDATES),
        "sweep": sweep(sets, thresholds),
        "score_summary": {k: s.summary() for k, s in sets.items()},
        "recommendation": rec,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": info,
    }
    md = markdown(data, sets, settings.match_threshold)
    json_path, md_path = write_results(NAME, data, md, args.results_dir)
    print(md)
    a = rec["at_recommended"]
    m = rec["at_match_threshold"]
    print(
        f"RECOMMENDED output_match_threshold = {rec['output_match_threshold']:.2f}: proxy genuine pass "
        f"{100 * a['proxy_genuine_pass']:.1f}% (vs {100 * m['proxy_genuine_pass']:.1f}% "
        f"at {settings.match_threshold:.2f}), impostor FAR {a['impostor_far']:.4g}, "
        f"proxy impostor FAR {a['proxy_impostor_far']:.4g}  [{rec['rule']}]"
    )
    print(f"wrote {json_path} and {md_path} in {data['seconds']} s")


if __name__ == "__main__":
    main()
