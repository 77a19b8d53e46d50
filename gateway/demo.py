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
from consentry.gateway.requests import (
    AdapterTrainingRequest,
    EnrollmentRequest,
    GenerationRequest,
    GrantRequest,
)
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.generation.base import GenerationMode
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


def cameraman_variants() -> list[Image.Image]:
    """Four views of scikit-image's cameraman (public domain), upscaled so his face passes the
    enrollment size rule: a second protected person for the demo."""
    base = Image.fromarray(skdata.camera()).convert("RGB").resize((1024, 1024), Image.Resampling.LANCZOS)
    base = base.crop((200, 60, 712, 572))
    return [
        base,
        ImageOps.mirror(base),
        ImageEnhance.Brightness(base).enhance(1.2),
        base.rotate(6, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)),
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
    width = max(len(n) for n in names) + 2  # every stage name stands apart, however long
    header = f"{'story':<44} {'decision':<26}" + "".join(f"{n:>{width}}" for n in names)
    print(header)
    print("-" * len(header))
    for s in stories:
        timings = [f"{s.stages[n]['elapsed_ms']:.0f} ms" if n in s.stages else "-" for n in names]
        cells = "".join(f"{t:>{width}}" for t in timings)
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
            # Its own adapter files: opening a gate sweeps files its database does not own.
            "adapters_dir": demo_dir / "adapters",
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
        made = check["c2pa"].get("generation") or {}
        refs = len(check["c2pa"].get("ingredients") or ())
        adapter = f", adapter {made['adapter_id']}" if made.get("adapter_id") else ""
        print(f"  {path}")
        print(f"    made by {made.get('mode')}{adapter}; {refs} reference(s) bound by hash, none embedded")
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
    avatars = (await gate.create_principal(operator, "demo-avatar-app", "requester")).principal
    views = astronaut_variants()
    # The astronaut's photos are kept (encrypted) so her adapter_training grant can use them.
    identity = await gate.enroll(
        operator,
        EnrollmentRequest(label="astronaut", photos=tuple(_png(v) for v in views[:4]), keep_photos=True),
    )
    cameraman = await gate.enroll(
        operator, EnrollmentRequest(label="cameraman", photos=tuple(_png(v) for v in cameraman_variants()))
    )

    async def consent(subject: str, who: PrincipalView, *purposes: Purpose, photos: bool = False) -> str:
        terms = GrantRequest(
            identity_id=subject,
            principal=who.id,
            purposes=purposes,
            deny_terms=("uniform",),
            attested_by="demo operator",
            consent_text_sha256=hashlib.sha256(b"demo consent").hexdigest(),
            use_enrollment_photos=photos,
        )
        return (await gate.grant(operator, terms)).id

    grant = await consent(identity.id, studio, Purpose.portrait, Purpose.adapter_training, photos=True)
    await consent(identity.id, avatars, Purpose.avatar)
    await consent(cameraman.id, studio, Purpose.portrait)

    def ask(prompt: str, refs: list[Image.Image], **how: Any) -> GenerationRequest:
        return GenerationRequest(
            subject_id=how.pop("subject", identity.id),
            purpose=how.pop("purpose", Purpose.portrait),
            prompt=prompt,
            references=tuple(_png(r) for r in refs),
            **how,
        )

    # A few steps on the tiny model: enough to show the consent-bound path end to end.
    trained = await gate.train_adapter(
        studio, AdapterTrainingRequest(identity_id=identity.id, steps=8, rank=4, prior_images=1)
    )
    adapter = await gate.wait_adapter(studio, trained.id)
    print(f"adapter {adapter.id} of the astronaut: {adapter.status}, {adapter.steps_done} steps")

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
        await _try(
            "granted studio, img2img from the 5th photo",
            gate,
            studio,
            ask("a portrait in a garden", [views[4]], mode=GenerationMode.img2img, strength=0.6),
        ),
        await _try("granted studio, her LoRA adapter", gate, studio, ask("a portrait", [], adapter=True)),
        await _try(
            "avatar-only app asks for her adapter",
            gate,
            avatars,
            ask("a portrait", [], adapter=True),
        ),
        await _try(
            "her photo as cameraman's reference",
            gate,
            studio,
            ask("a portrait", [views[4]], subject=cameraman.id),
        ),
    ]
    await gate.revoke(operator, grant)
    stories.append(await _try("granted studio after revocation", gate, studio, ask("a portrait", [views[4]])))
    return stories
