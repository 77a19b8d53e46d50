"""The six stages of the gate, as thin adapters from the request context to each package.

The rules live in the packages (policies.consent, detectors.verification, provenance); a stage
only gathers inputs, runs blocking model work in a worker thread, and records what it produced
on the context for the next stage.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from PIL import Image

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.detectors.index import IdentityScores
from consentry.detectors.verification import judge_outputs, judge_references
from consentry.gateway.index_cache import IndexCache
from consentry.gateway.pipeline import GateContext
from consentry.gateway.storage.subjects import Subjects
from consentry.generation.base import GenerationJob, Generator
from consentry.policies.consent import evaluate_consent
from consentry.policies.decision import Verdict
from consentry.provenance.keys import SigningMaterial
from consentry.provenance.manifest import ManifestInfo, sign_image
from consentry.provenance.watermark import Watermarker

POLICY_VERSION = "2026-11.1"


class ConsentStage:
    """A live grant must let this principal generate this subject for this purpose and prompt."""

    def __init__(self, subjects: Subjects, deny_terms: list[str]) -> None:
        self.subjects = subjects
        self.deny_terms = deny_terms

    async def check(self, ctx: GateContext) -> Verdict:
        # Read the grants at request time: a revocation takes effect on the very next request.
        subject = await self.subjects.get(ctx.subject.id)
        grants = await self.subjects.grants_for(subject.id, ctx.principal.id)
        outcome = evaluate_consent(
            subject_status=subject.status,
            grants=grants,
            principal_id=ctx.principal.id,
            purpose=ctx.purpose,
            prompt=ctx.prompt,
            deployment_deny_terms=self.deny_terms,
            now=datetime.now(UTC),
        )
        ctx.grant = outcome.grant
        return outcome.verdict


async def _score(
    analyzer: FaceAnalyzer, index: IndexCache, images: Sequence[Image.Image]
) -> list[IdentityScores]:
    analyzed = await asyncio.to_thread(analyzer.analyze, images)
    current = await index.get()
    return [current.scores(a.embeddings) for a in analyzed]


class ReferenceFacesStage:
    """Every face in every reference image must be the subject."""

    def __init__(self, analyzer: FaceAnalyzer, index: IndexCache, threshold: float, allow_unknown: bool):
        self.analyzer, self.index = analyzer, index
        self.threshold, self.allow_unknown = threshold, allow_unknown

    async def check(self, ctx: GateContext) -> Verdict:
        if not ctx.references:
            return Verdict.allow("no reference images")
        scores = await _score(self.analyzer, self.index, list(ctx.references))
        return judge_references(
            scores, subject=ctx.subject.id, threshold=self.threshold, allow_unknown=self.allow_unknown
        )


class GenerateStage:
    def __init__(self, generator: Generator, guidance_scale: float = 5.0) -> None:
        self.generator = generator
        self.guidance_scale = guidance_scale

    async def check(self, ctx: GateContext) -> Verdict:
        job = GenerationJob(
            prompt=ctx.prompt,
            negative_prompt=ctx.negative_prompt,
            seed=ctx.seed,
            steps=ctx.steps,
            width=ctx.width,
            height=ctx.height,
            num_images=ctx.num_images,
            guidance_scale=self.guidance_scale,
            references=tuple(ctx.references),
        )
        out = await asyncio.to_thread(self.generator.generate, job)
        ctx.outputs, ctx.model, ctx.untrained = list(out.images), out.model, out.untrained
        note = " (untrained model: outputs are noise-like)" if out.untrained else ""
        return Verdict.allow(f"{len(out.images)} image(s) from {out.model}{note}", images=len(out.images))


class OutputFacesStage:
    """No output may show anyone but the subject."""

    def __init__(self, analyzer: FaceAnalyzer, index: IndexCache, threshold: float, require_face: bool):
        self.analyzer, self.index = analyzer, index
        self.threshold, self.require_face = threshold, require_face

    async def check(self, ctx: GateContext) -> Verdict:
        scores = await _score(self.analyzer, self.index, ctx.outputs)
        verdict = judge_outputs(
            scores, subject=ctx.subject.id, threshold=self.threshold, require_face=self.require_face
        )
        ctx.output_scores = dict(verdict.scores)
        return verdict


class WatermarkStage:
    """Embed the record's payload and prove it survives re-encoding before anything leaves."""

    def __init__(self, watermarker: Watermarker, attempts: int = 3) -> None:
        self.watermarker = watermarker
        self.attempts = attempts

    async def check(self, ctx: GateContext) -> Verdict:
        def mark_all() -> list[Image.Image]:
            return [self.watermarker.embed_verified(img, ctx.watermark, self.attempts) for img in ctx.outputs]

        ctx.marked = await asyncio.to_thread(mark_all)
        return Verdict.allow(f"payload {ctx.watermark.hex()} decodes after JPEG 75 + resize")


class SignStage:
    """Sign each marked output with a C2PA manifest; the consent assertion names the grant by hash."""

    def __init__(
        self, load_material: Callable[[], SigningMaterial], watermark_algorithm: str, generator_version: str
    ) -> None:
        self.load_material = load_material
        self.watermark_algorithm = watermark_algorithm
        self.generator_version = generator_version

    async def check(self, ctx: GateContext) -> Verdict:
        assert ctx.grant is not None, "the consent stage runs before signing"
        material = self.load_material()
        info = ManifestInfo(
            title=f"consentry-{ctx.request_id}.png",
            claim_generator=f"consentry/{self.generator_version}",
            record_id=ctx.request_id,
            model=ctx.model,
            untrained=ctx.untrained,
            watermark_algorithm=self.watermark_algorithm,
            watermark_payload_hex=ctx.watermark.hex(),
            consent_record_hash=hashlib.sha256(ctx.grant.id.encode()).hexdigest(),
            purpose=ctx.purpose,
            verifier_scores=dict(ctx.output_scores),
            policy_version=POLICY_VERSION,
        )

        def sign_all() -> list[bytes]:
            signed = []
            for image in ctx.marked:
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                signed.append(sign_image(buf.getvalue(), "image/png", info, material))
            return signed

        ctx.signed = await asyncio.to_thread(sign_all)
        ctx.manifest = {"claim_generator": info.claim_generator, "record_id": info.record_id}
        return Verdict.allow(f"{len(ctx.signed)} image(s) signed")
