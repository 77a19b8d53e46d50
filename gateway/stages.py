"""The gate's steps, as thin adapters from a :class:`GateJob` to each package.

The rules live in the packages (:mod:`consentry.policies.consent`,
:mod:`consentry.detectors.verification`, :mod:`consentry.provenance`); a stage gathers its inputs,
runs blocking model work in a worker thread, and returns a verdict or its frozen output.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from consentry.detectors.content import judge_content, shows_enrolled_likeness
from consentry.detectors.images import sniff_mime
from consentry.detectors.verification import judge_outputs, judge_references, judge_unnamed
from consentry.gateway.flow import GateJob, Refusal
from consentry.gateway.storage.subjects import Subjects
from consentry.generation.base import AdapterWeights, GenerationMode, GenerationOutput, Generator
from consentry.policies import codes
from consentry.policies.consent import Consent, evaluate_consent, evaluate_prompt
from consentry.policies.decision import Verdict
from consentry.policies.errors import StageError
from consentry.policies.policy import Policy
from consentry.policies.prompt_rules import MeaningCheck, semantic_verdict
from consentry.provenance.ingredients import ReferenceIngredient
from consentry.provenance.keys import SigningMaterial
from consentry.provenance.manifest import ManifestInfo, sign_image
from consentry.provenance.outputs import MarkedImages, SignedImages
from consentry.provenance.watermark import Watermarker

if TYPE_CHECKING:
    from consentry.detectors.analyzer import Analyzer
    from consentry.detectors.content import ContentClassifier
    from consentry.detectors.index import IdentityScores
    from consentry.gateway.index_cache import IndexCache


class ConsentStage:
    """A named subject needs a live grant that lets this principal generate them for this purpose
    and prompt; every request passes the deployment's prompt rules: deny terms first, then, when
    the policy turns it on, the deny categories by meaning (one embedding in a worker thread)."""

    def __init__(self, subjects: Subjects, policy: Policy, meaning: MeaningCheck | None = None) -> None:
        self.subjects = subjects
        self.policy = policy
        self.meaning = meaning

    async def check(self, job: GateJob) -> Consent:
        deny_terms = self.policy.deny_terms_for(job.purpose)
        if job.subject is None:
            verdict = evaluate_prompt(job.generation.prompt, deny_terms)
            if not verdict.allowed:
                raise Refusal(verdict)
            await self._by_meaning(job.generation.prompt)
            return Consent(None)
        # Read the subject and its grants at request time: a revocation or erasure takes effect
        # on the very next request, whichever gateway process recorded it.
        subject = await self.subjects.get(job.subject.id)
        grants = await self.subjects.grants_for(subject.id, job.principal.id)
        outcome = evaluate_consent(
            subject_status=subject.status,
            grants=grants,
            principal_id=job.principal.id,
            purpose=job.purpose or "",
            prompt=job.generation.prompt,
            deployment_deny_terms=deny_terms,
            now=datetime.now(UTC),
            needs_liveness=bool(self.policy.liveness_required([job.purpose] if job.purpose else [])),
        )
        if outcome.grant is None:
            raise Refusal(outcome.verdict)
        await self._by_meaning(job.generation.prompt)
        return Consent(outcome.grant)

    async def _by_meaning(self, prompt: str) -> None:
        """Refuse a prompt that falls in a deny category, naming the category."""
        if self.meaning is None:
            return
        verdict = semantic_verdict(await asyncio.to_thread(self.meaning.check, prompt))
        if not verdict.allowed:
            raise Refusal(verdict)


async def _score(
    analyzer: Analyzer, index: IndexCache, images: Sequence[Image.Image]
) -> list[IdentityScores]:
    analyzed = await asyncio.to_thread(analyzer.analyze, list(images))
    current = await index.get()
    return await asyncio.to_thread(lambda: [current.scores(a.embeddings) for a in analyzed])


class ReferenceFacesStage:
    """Every face in every reference image must be the subject; without a subject, none may be
    an enrolled identity."""

    def __init__(self, analyzer: Analyzer, index: IndexCache, threshold: float, allow_unknown: bool) -> None:
        self.analyzer, self.index = analyzer, index
        self.threshold, self.allow_unknown = threshold, allow_unknown

    async def check(self, job: GateJob) -> Verdict:
        references = job.generation.references
        if not references:
            return Verdict.allow("no reference images")
        scores = await _score(self.analyzer, self.index, references)
        if job.subject is None:
            return judge_unnamed(scores, threshold=self.threshold, allow_unknown=True, outputs=False)
        return judge_references(
            scores, subject=job.subject.id, threshold=self.threshold, allow_unknown=self.allow_unknown
        )


class AdapterWeightsSource(Protocol):
    async def open_weights(self, adapter_id: str) -> bytes:
        """The adapter's weights, decrypted in memory (never to disk)."""
        ...


class GenerateStage:
    """Hand the approved job to the configured generator (it knows nothing of consent). A job
    that asks for the subject's adapter gets its weights decrypted here, in memory, for this job
    only: consent and the reference check have already allowed it."""

    def __init__(self, generator: Generator, adapters: AdapterWeightsSource | None = None) -> None:
        self.generator = generator
        self.adapters = adapters

    async def run(self, job: GateJob) -> GenerationOutput:
        work = job.generation
        if job.adapter_id is not None:
            if self.adapters is None:
                raise StageError("this gate stores no adapters", code=codes.ADAPTER_UNSUPPORTED)
            weights = await self.adapters.open_weights(job.adapter_id)
            work = replace(work, adapter=AdapterWeights(job.adapter_id, weights))
        return await asyncio.to_thread(self.generator.generate, work)


class OutputFacesStage:
    """No output may show anyone but the subject; without a subject, no output may show an
    enrolled identity (and, if the deployment says so, no face of anyone)."""

    def __init__(
        self,
        analyzer: Analyzer,
        index: IndexCache,
        threshold: float,
        *,
        require_face: bool,
        allow_unknown_unnamed: bool,
        subject_threshold: float | None = None,
    ) -> None:
        self.analyzer, self.index, self.threshold = analyzer, index, threshold
        self.require_face, self.allow_unknown_unnamed = require_face, allow_unknown_unnamed
        self.subject_threshold = subject_threshold

    async def check(self, job: GateJob, generated: GenerationOutput) -> Verdict:
        scores = await _score(self.analyzer, self.index, generated.images)
        if job.subject is None:
            return judge_unnamed(
                scores, threshold=self.threshold, allow_unknown=self.allow_unknown_unnamed, outputs=True
            )
        return judge_outputs(
            scores,
            subject=job.subject.id,
            threshold=self.threshold,
            require_face=self.require_face,
            subject_threshold=self.subject_threshold,
        )


class ContentStage:
    """Explicit output that shows an enrolled person's face is always refused; explicit output
    without one follows the policy (the deployment's setting, tightened per purpose). Takes the
    output faces verdict: that check already decided whose faces the outputs show."""

    def __init__(self, classifier: ContentClassifier | None, policy: Policy) -> None:
        self.classifier = classifier
        self.policy = policy

    async def check(self, job: GateJob, generated: GenerationOutput, faces: Verdict) -> Verdict:
        classifier = self.classifier
        if classifier is None:
            return Verdict.allow("no content classifier is configured")
        try:
            explicit = await asyncio.to_thread(classifier.explicit_scores, generated.images)
        except Exception as exc:
            # A classifier that cannot score (missing or bad model, runtime error) refuses:
            # stage.error, whatever the cause, which the reason names.
            reason = f"content classifier {classifier.name} failed: {exc}"
            raise StageError(reason, code=codes.STAGE_ERROR) from exc
        return judge_content(
            explicit,
            threshold=self.policy.content.threshold,
            enrolled_likeness=shows_enrolled_likeness(faces, subject_named=job.subject is not None),
            allow_explicit=self.policy.explicit_allowed_for(job.purpose),
        )


class WatermarkStage:
    """Embed the record's payload and prove it survives re-encoding before anything leaves."""

    def __init__(self, watermarker: Watermarker, attempts: int = 3) -> None:
        self.watermarker = watermarker
        self.attempts = attempts

    async def run(self, generated: GenerationOutput, payload: bytes) -> MarkedImages:
        def mark_all() -> tuple[Image.Image, ...]:
            # All images at once: batched on the GPU when the watermarker's device is CUDA.
            return tuple(self.watermarker.embed_verified_many(generated.images, payload, self.attempts))

        images = await asyncio.to_thread(mark_all)
        return MarkedImages(
            images=images,
            payload=payload,
            algorithm=self.watermarker.algorithm,
            key_id=self.watermarker.current_key_id,
        )


def _used_references(job: GateJob, mode: GenerationMode) -> tuple[ReferenceIngredient, ...]:
    """The reference files the model actually used, bound into the manifest by hash only:
    img2img starts from the first, IP-Adapter conditions on all, text-to-image uses none (its
    references were only checked)."""
    if mode is GenerationMode.txt2img:
        return ()
    files = job.reference_files[:1] if mode is GenerationMode.img2img else job.reference_files
    mimes = [sniff_mime(f) for f in files]
    # A decodable format Pillow has no MIME type for is still an image.
    return tuple(
        ReferenceIngredient(data=f, media_type=m if m.startswith("image/") else "image/x-unknown")
        for f, m in zip(files, mimes, strict=True)
    )


class SignStage:
    """Sign each marked output with a C2PA manifest; the consent assertion names the grant by hash."""

    def __init__(
        self, load_material: Callable[[], SigningMaterial], generator_version: str, policy_version: str
    ) -> None:
        # Loaded per request (in the worker thread): a renewed certificate is used at once.
        self.load_material = load_material
        self.generator_version = generator_version
        self.policy_version = policy_version

    async def run(
        self,
        job: GateJob,
        consent: Consent,
        generated: GenerationOutput,
        marked: MarkedImages,
        scores: Verdict,
    ) -> SignedImages:
        grant = consent.grant
        info = ManifestInfo(
            title=f"consentry-{job.request_id}.png",
            claim_generator=f"consentry/{self.generator_version}",
            record_id=job.request_id,
            model=generated.model,
            untrained=generated.untrained,
            watermark_algorithm=marked.algorithm,
            watermark_payload_hex=marked.payload.hex(),
            consent_record_hash=hashlib.sha256(grant.id.encode()).hexdigest() if grant else None,
            purpose=job.purpose,
            verifier_scores=dict(scores.scores),
            policy_version=self.policy_version,
            mode=generated.mode,
            adapter_id=generated.adapter_id,
            references=_used_references(job, generated.mode),
        )

        def sign_all() -> tuple[bytes, ...]:
            material = self.load_material()
            signed = []
            for image in marked.images:
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                signed.append(sign_image(buf.getvalue(), "image/png", info, material))
            return tuple(signed)

        files = await asyncio.to_thread(sign_all)
        manifest = {"claim_generator": info.claim_generator, "record_id": info.record_id}
        return SignedImages(files=files, media_type="image/png", manifest=manifest)
