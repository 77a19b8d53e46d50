"""C2PA signing cost for a 1024x1024 JPEG: Consentry's settings vs c2pa-python's defaults.

Both sign the same manifest with the same ES256 callback signer in the same run; the only
difference is the builder settings (ours: no thumbnail, no network). Goal: <= 5 ms per image.
Run: ``python bench/c2pa_signing.py``.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from common import (
    faces_dir,
    goal,
    goal_text,
    machine_info,
    md_table,
    measure_interleaved,
    repo_on_path,
    write_results,
)

repo_on_path()

import c2pa  # noqa: E402
from PIL import Image  # noqa: E402

from consentry.provenance.keys import init_dev_keys, load_signing_material  # noqa: E402
from consentry.provenance.manifest import ManifestInfo, build_manifest, read_manifest, sign_image  # noqa: E402


def main() -> None:
    photo = Image.open(faces_dir() / "lfw" / "Tony_Blair" / "Tony_Blair_0002.jpg").convert("RGB")
    buf = io.BytesIO()
    photo.resize((1024, 1024), Image.Resampling.LANCZOS).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    keys = Path(tempfile.mkdtemp()) / "keys"
    init_dev_keys(keys)
    material = load_signing_material(keys)
    info = ManifestInfo(
        title="bench.jpg",
        claim_generator="consentry/0.1.0",
        record_id="gen_0123456789abcdef",
        model="tiny",
        untrained=True,
        watermark_algorithm="org.consentry.watermark.bench",
        watermark_payload_hex="0123456789abcdef",
        consent_record_hash="0" * 64,
        purpose="portrait",
        verifier_scores={"subject_min": 0.95},
        policy_version="bench",
    )

    def defaults(_: int) -> bytes:
        out = io.BytesIO()
        with (
            c2pa.Signer.from_callback(
                material.sign, c2pa.C2paSigningAlg.ES256, material.cert_chain_pem, None
            ) as signer,
            c2pa.Builder(build_manifest(info)) as builder,
        ):
            builder.sign(signer, "image/jpeg", io.BytesIO(jpeg), out)
        return out.getvalue()

    def ours(_: int) -> bytes:
        return sign_image(jpeg, "image/jpeg", info, material)

    sizes = {"consentry": len(ours(0)) - len(jpeg), "c2pa defaults": len(defaults(0)) - len(jpeg)}
    state = read_manifest(ours(0), "image/jpeg", material.trust_anchor_pem).state
    timings = measure_interleaved({"consentry": ours, "c2pa defaults": defaults}, repeats=40, warmup=3)
    g = goal(timings["consentry"].median_ms, 5.0, at_most=True)
    rows = [[name, t.median_ms, t.p95_ms, sizes[name] / 1024] for name, t in timings.items()]
    ratio = timings["c2pa defaults"].median_ms / timings["consentry"].median_ms
    md = "\n".join(
        [
            "# C2PA signing, 1024x1024 JPEG",
            "",
            md_table(["settings", "median ms", "p95 ms", "added kB"], rows),
            "",
            f"Goal {goal_text(g, 'ms')}. Defaults / ours = {ratio:.1f}x in this run. "
            f"Signed image reads back as {state} with the dev CA as anchor.",
        ]
    )
    data = {
        "machine": machine_info(),
        "image": {"size": [1024, 1024], "jpeg_bytes": len(jpeg)},
        "results": {
            name: {"median_ms": t.median_ms, "p95_ms": t.p95_ms, "added_bytes": sizes[name]}
            for name, t in timings.items()
        },
        "ratio_defaults_over_ours": ratio,
        "goal": g,
        "read_back_state": state,
    }
    for path in write_results("c2pa_signing", data, md):
        print(path)
    print(md)


if __name__ == "__main__":
    main()
