"""``consentry demo``: the whole gate, offline, on scikit-image's public-domain astronaut photo.

The demo keeps its own database and outputs under ``DATA_DIR/demo`` (recreated each run) and
shares the keys and the tiny model with the data directory, building them when absent.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance, ImageOps
from skimage import data as skdata

from consentry.gateway.flow import STAGES
from consentry.gateway.gate import Gate, Release
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import ConfigurationError, ConsentryError


@dataclass(frozen=True, slots=True)
class Story:
    name: str
    code: str
    stages: dict[str, dict[str, Any]]
    outputs: tuple[Path, ...] = ()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def astronaut_variants() -> list[Image.Image]:
    """Five views of one face: the photo and simple, deterministic augmentations of it."""
    base = Image.fromarray(skdata.astronaut())
    return [
        base,
        ImageOps.mirror(base),
        ImageEnhance.Brightness(base).enhance(1.25),
        base.rotate(8, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)),
        base.crop((40, 0, 472, 432)).resize((512, 512), Image.Resampling.LANCZOS),
    ]


def faceless_photo() -> Image.Image:
    return Image.fromarray(skdata.coffee())


async def _try(name: str, gate: Gate, who: PrincipalView, req: GenerationRequest) -> Story:
    try:
        release: Release = await gate.generate(who, req)
    except ConsentryError as exc:
        return Story(name, exc.code, exc.extra.get("stages", {}))
    return Story(name, codes.RELEASED, release.decision.as_dict(), release.paths)


def print_table(stories: list[Story]) -> None:
    names = STAGES
    header = f"{'story':<44} {'decision':<26}" + "".join(f"{n:>14}" for n in names)
    print(header)
    print("-" * len(header))
    for s in stories:
        timings = [f"{s.stages[n]['elapsed_ms']:.0f} ms" if n in s.stages else "-" for n in names]
        cells = "".join(f"{t:>14}" for t in timings)
        print(f"{s.name:<44} {s.code:<26}{cells}")
    print("(stage timings in milliseconds; '-' = not reached)")


async def run_demo(settings: Settings, out: Path | None) -> int:
    from consentry.gateway.wiring import open_gate
    from consentry.generation.tiny import build_tiny_pipeline
    from consentry.provenance.keys import init_dev_keys, load_signing_material

    try:
        load_signing_material(settings.keys_dir)
    except ConfigurationError as exc:
        if exc.code != codes.KEYS_MISSING:
            raise
        init_dev_keys(settings.keys_dir)
    if not (settings.model_dir / "model_index.json").exists():
        build_tiny_pipeline(settings.model_dir)
    demo_dir = settings.data_dir / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    demo_settings = settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{demo_dir / 'demo.db'}",
            "output_dir": out or demo_dir / "outputs",
        }
    )
    gate = await open_gate(demo_settings)
    try:
        stories = await _stories(gate)
        report = await gate.verify_audit(LOCAL_ACTOR)
        released = [p for s in stories for p in s.outputs]
        checks = [(await gate.verify_provenance(LOCAL_ACTOR, p.read_bytes())).as_dict() for p in released]
    finally:
        await gate.close()
    print("Consentry demo — tiny UNTRAINED pipeline: released images are noise-like by design.\n")
    print_table(stories)
    print(f"\nreleased images ({len(released)}), read back as a verifier would:")
    for path, check in zip(released, checks, strict=True):
        mark = check["watermark"]
        record = check["record"] or {}
        print(f"  {path}")
        print(
            f"    C2PA {check['c2pa']['state']}; watermark {mark['payload']} "
            f"(confidence {mark['confidence']:.2f}) -> record {record.get('id')}, "
            f"audit seq {record.get('audit_seq')}"
        )
    print(f"audit chain: {'intact' if report.ok else 'BROKEN'}, {report.events} events")
    return 0 if report.ok and released else 1


async def _stories(gate: Gate) -> list[Story]:
    operator = LOCAL_ACTOR
    studio = (await gate.create_principal(operator, "demo-studio", "requester")).principal
    other = (await gate.create_principal(operator, "demo-other-app", "requester")).principal
    views = astronaut_variants()
    identity = await gate.enroll(
        operator, EnrollmentRequest(label="astronaut", photos=tuple(_png(v) for v in views[:4]))
    )
    grant = await gate.grant(
        operator,
        GrantRequest(
            identity_id=identity.id,
            principal=studio.id,
            purposes=(Purpose.portrait,),
            deny_terms=("uniform",),
            attested_by="demo operator",
            consent_text_sha256=hashlib.sha256(b"demo consent").hexdigest(),
        ),
    )

    def ask(prompt: str, refs: list[Image.Image]) -> GenerationRequest:
        return GenerationRequest(
            subject_id=identity.id,
            purpose=Purpose.portrait,
            prompt=prompt,
            references=tuple(_png(r) for r in refs),
        )

    stories = [
        await _try(
            "granted studio, 5th photo as reference", gate, studio, ask("a portrait in a garden", [views[4]])
        ),
        await _try("another app asks for the same person", gate, other, ask("a portrait", [views[4]])),
        await _try(
            "granted studio, reference without a face", gate, studio, ask("a portrait", [faceless_photo()])
        ),
        await _try(
            "granted studio, prompt the grant denies", gate, studio, ask("her in uniform", [views[4]])
        ),
    ]
    await gate.revoke(operator, grant.id)
    stories.append(await _try("granted studio after revocation", gate, studio, ask("a portrait", [views[4]])))
    return stories
