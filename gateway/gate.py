"""The Gate: every operation of Consentry, shared by the HTTP routes and the CLI.

Its operations take typed requests with image files as bytes (:mod:`consentry.gateway.requests`)
and return typed results; it knows nothing of HTTP or base64. Authorization happens here and only
here: every operation names the :class:`Action` it performs and checks the actor's role against
the one role table (:mod:`consentry.policies.roles`). Components are built by
:mod:`consentry.gateway.wiring` and injected through :class:`GateParts`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from PIL import Image

from consentry.detectors.images import decode_image, sniff_mime
from consentry.gateway.admission import Admission
from consentry.gateway.flow import GateJob, GenerateFlow
from consentry.gateway.health import Readiness, check_readiness
from consentry.gateway.logs import record_id
from consentry.gateway.metrics import GateMetrics
from consentry.gateway.personalization import check_personalization
from consentry.gateway.ratelimit import RateLimiter
from consentry.gateway.release import REFUSED, audit_body
from consentry.gateway.requests import (
    AdapterTrainingRequest,
    EnrollmentRequest,
    GenerationRequest,
    GrantRequest,
)
from consentry.gateway.storage.adapters import Adapters, AdapterView
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.principals import IssuedKey, Principals, PrincipalView
from consentry.gateway.storage.records import Records
from consentry.gateway.storage.subjects import IdentityView, Subjects
from consentry.generation.base import (
    GenerationJob,
    Generator,
)
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import GrantTerms, Purpose
from consentry.policies.decision import Decision
from consentry.policies.errors import (
    BadInputError,
    GateBusyError,
    NotFoundError,
    RefusedError,
    StageError,
)
from consentry.policies.roles import Action, Role, require
from consentry.provenance.audit import ChainedEvent, ChainReport
from consentry.provenance.verification import ProvenanceReport, ProvenanceVerifier

if TYPE_CHECKING:
    from consentry.detectors.analyzer import Analyzer
    from consentry.gateway.index_cache import IndexCache
    from consentry.gateway.models import Loadable
    from consentry.gateway.personalization import AdapterTraining, Progress
    from consentry.gateway.self_enrollment import SelfEnrollment
    from consentry.gateway.storage.challenges import IssuedChallenge

log = logging.getLogger("consentry.gate")


async def decode_uploads(s: Settings, files: Sequence[bytes]) -> list[Image.Image]:
    """Decode uploads under the configured limits, off the event loop."""

    def decode_all() -> list[Image.Image]:
        return [decode_image(d, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels) for d in files]

    return await asyncio.to_thread(decode_all)


@dataclass(frozen=True, slots=True, kw_only=True)
class GateParts:
    """Everything a Gate works with, built by :func:`consentry.gateway.wiring.open_gate`."""

    settings: Settings
    db: Database
    audit: AuditLog
    principals: Principals
    subjects: Subjects
    records: Records
    analyzer: Analyzer
    generator: Generator
    index: IndexCache
    flow: GenerateFlow
    provenance: ProvenanceVerifier
    rate_limits: RateLimiter
    admission: Admission
    metrics: GateMetrics
    adapters: Adapters
    training: AdapterTraining
    self_enrollment: SelfEnrollment
    models: Sequence[Loadable] = ()
    """Models to load at warm-up and release at close (lazy holders of analyzer and generator)."""


@dataclass(frozen=True, slots=True)
class Release:
    """A released generation: signed PNG files and where they were written."""

    record_id: str
    watermark: str
    images: tuple[bytes, ...]
    paths: tuple[Path, ...]
    decision: Decision
    audit_seq: int
    model: str
    untrained: bool
    mode: str
    adapter_id: str | None


class Gate:
    def __init__(self, parts: GateParts) -> None:
        self.parts = parts
        self.settings, self.db = parts.settings, parts.db
        self.audit, self.principals = parts.audit, parts.principals
        self.subjects, self.records = parts.subjects, parts.records
        self.analyzer, self.generator, self.index = parts.analyzer, parts.generator, parts.index

    async def warm(self) -> None:
        """Load every model now, in a worker thread, so no request pays for a load."""
        for model in self.parts.models:
            await asyncio.to_thread(model.load)

    async def close(self) -> None:
        await self.parts.training.close()  # running jobs end as interrupted, leaving no adapter
        for model in self.parts.models:
            model.close()
        await self.parts.rate_limits.close()
        await self.parts.db.dispose()

    async def _decode(self, files: Sequence[bytes]) -> list[Image.Image]:
        return await decode_uploads(self.settings, files)

    async def readiness(self) -> Readiness:
        """Database reachable, models loaded, signed audit head valid: constant cost."""
        return await check_readiness(self.parts.db, self.audit, self.parts.models)

    # -- principals and keys ------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> PrincipalView:
        return await self.principals.authenticate(secret)

    async def principal_named(self, actor: PrincipalView, name: str) -> PrincipalView:
        """The principal called ``name``, for a local actor acting on its behalf (CLI ``--as``)."""
        require(actor.role, Action.manage_principals)
        return await self.principals.by_name(name)

    async def create_principal(self, actor: PrincipalView, name: str, role: str) -> IssuedKey:
        require(actor.role, Action.manage_principals)
        return await self.principals.create(name, role, actor=actor.id)

    async def issue_key(self, actor: PrincipalView, principal_id: str) -> IssuedKey:
        require(actor.role, Action.manage_principals)
        return await self.principals.issue_key(principal_id, actor=actor.id)

    async def revoke_key(self, actor: PrincipalView, key_id: str) -> None:
        require(actor.role, Action.manage_principals)
        await self.principals.revoke_key(key_id, actor=actor.id)

    # -- enrollment and consent -----------------------------------------------------------------

    async def enrollment_challenge(self, actor: PrincipalView) -> IssuedChallenge:
        """A one-time self-enrollment challenge (head poses, nonce, expiry) for ``actor``."""
        require(actor.role, Action.enrollment_challenge)
        return await self.parts.self_enrollment.issue(actor)

    async def enroll(self, actor: PrincipalView, req: EnrollmentRequest) -> IdentityView:
        from consentry.detectors.enrollment import enrollment_templates

        require(actor.role, Action.enroll)
        s = self.settings
        liveness, answer = self.parts.self_enrollment, req.liveness
        challenge = await liveness.open(actor, answer) if answer is not None else None
        frames = answer.frames if answer is not None else ()
        # Photos and frames in one decode and one analyzer call.
        images = await self._decode([*req.photos, *frames])
        analyzed = await asyncio.to_thread(self.analyzer.analyze, images)
        n = len(req.photos)
        existing = await self.parts.index.get()
        templates = await asyncio.to_thread(
            enrollment_templates,
            analyzed[:n],
            min_photos=s.min_enroll_photos,
            min_face_px=s.min_enroll_face_px,
            threshold=s.match_threshold,
            existing=existing,
        )
        embedder = self.analyzer.embedder.name
        details = {"embedder": embedder, "photos": n}
        photos = req.photos if req.keep_photos else ()
        if challenge is None or answer is None:
            return await self.subjects.enroll(
                req.label, templates, embedder, actor.id, details, photos=photos
            )
        proof = await liveness.prove(actor, challenge, answer, images[n:], analyzed[n:], templates)
        return await liveness.enroll(
            actor,
            proof,
            answer,
            lambda attested, spend, more: self.subjects.enroll(
                req.label, templates, embedder, actor.id, details | more, photos, attested, spend
            ),
        )

    async def grant(self, actor: PrincipalView, req: GrantRequest) -> GrantTerms:
        require(actor.role, Action.grant)
        if req.use_enrollment_photos and Purpose.adapter_training not in req.purposes:
            raise BadInputError(
                "use_enrollment_photos needs the adapter_training purpose", code=codes.GRANT_PURPOSE_INVALID
            )
        try:
            grantee = await self.principals.get(req.principal)
        except NotFoundError:
            grantee = await self.principals.by_name(req.principal)
        purposes = [p.value for p in req.purposes]
        attested = await self.parts.self_enrollment.grant_attestation(actor, req.identity_id, purposes)
        evidence = {
            "attested_by": req.attested_by,
            "attested_at": datetime.now(UTC).isoformat(),
            "consent_text_sha256": req.consent_text_sha256,
            "attestation": attested.kind,
            "liveness_challenge_id": attested.challenge_id,
            "liveness_evidence_sha256": attested.evidence_sha256,
        }
        return await self.subjects.grant(
            identity_id=req.identity_id,
            principal_id=grantee.id,
            purposes=purposes,
            deny_terms=list(req.deny_terms),
            expires_at=req.expires_at,
            max_uses=req.max_uses,
            evidence=evidence,
            actor=actor.id,
            use_enrollment_photos=req.use_enrollment_photos,
            attestation=attested.kind,
        )

    async def erase(self, actor: PrincipalView, identity_id: str) -> dict[str, int]:
        require(actor.role, Action.erase)
        return await self.subjects.erase(identity_id, actor.id)

    async def revoke(self, actor: PrincipalView, grant_id: str) -> None:
        require(actor.role, Action.revoke)
        await self.subjects.revoke(grant_id, actor.id)

    # -- generation -----------------------------------------------------------------------------

    async def generate(self, actor: PrincipalView, req: GenerationRequest) -> Release:
        require(actor.role, Action.generate)
        await self.parts.rate_limits.take(actor.id)
        s = self.settings
        # Input problems are answered before anything is stored or audited.
        subject = await self.subjects.get(req.subject_id) if req.subject_id is not None else None
        if subject is not None and req.purpose is None:
            raise BadInputError(
                "a request that names a subject must name a purpose", code=codes.INPUT_PURPOSE_REQUIRED
            )
        if len(req.references) > s.max_references:
            raise BadInputError(
                f"at most {s.max_references} reference images", code=codes.INPUT_TOO_MANY_REFERENCES
            )
        adapter_id = await check_personalization(req, subject, self.generator, self.parts.adapters)
        references = tuple(await self._decode(req.references))
        job = GateJob(
            request_id=f"gen_{secrets.token_hex(8)}",
            principal=actor,
            subject=subject,
            purpose=req.purpose.value if req.purpose else None,
            # Building the job checks every generation parameter against the shared limits.
            generation=GenerationJob(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                seed=req.seed,
                steps=req.steps or s.generation_steps,
                width=req.width or s.image_size,
                height=req.height or s.image_size,
                num_images=req.num_images,
                guidance_scale=s.guidance_scale,
                references=references,
                mode=req.mode,
                strength=req.strength,
            ),
            reference_files=req.references,
            adapter_id=adapter_id,
            payload=secrets.token_bytes(8),
        )
        record_id.set(job.request_id)
        metrics, started = self.parts.metrics, time.perf_counter()
        try:
            async with self.parts.admission.slot():
                result = await self.parts.flow.run(job)
        except GateBusyError as busy:
            metrics.decided(Decision({}), code=busy.code)
            # Refused at once, before any stage ran; audited like every other decision.
            body = audit_body(job, Decision({}), keep_prompt=s.audit_prompts)
            event = await self.audit.append(REFUSED, body | {"decision": busy.code, "reason": busy.detail})
            busy.extra["audit_seq"] = event.seq
            raise
        metrics.decided(result.decision)
        metrics.request_seconds.observe(time.perf_counter() - started)
        log.info("generation %s: %s", job.request_id, result.decision.code)
        released, generated = result.released, result.generated
        if released is None or generated is None:
            await self._refuse(job, result.decision)
        return Release(
            record_id=released.record_id,
            watermark=job.payload.hex(),
            images=released.files,
            paths=released.paths,
            decision=result.decision,
            audit_seq=released.audit_seq,
            model=generated.model,
            untrained=generated.untrained,
            mode=generated.mode.value,
            adapter_id=generated.adapter_id,
        )

    async def _refuse(self, job: GateJob, decision: Decision) -> NoReturn:
        """Audit the refusal, then raise it: a rule's refusal is 403, a fault 503."""
        body = audit_body(job, decision, keep_prompt=self.settings.audit_prompts)
        event = await self.audit.append(REFUSED, body)
        refusal = decision.refusal
        if refusal is None:  # pragma: no cover - the flow returns no release only on a refusal
            raise StageError("the flow ended without a decision", code=codes.STAGE_ERROR)
        name, verdict = refusal
        error_cls = StageError if verdict.fault else RefusedError
        raise error_cls(
            f"{name}: {verdict.reason}", code=verdict.code, stages=decision.as_dict(), audit_seq=event.seq
        )

    # -- adapters -------------------------------------------------------------------------------

    async def train_adapter(self, actor: PrincipalView, req: AdapterTrainingRequest) -> AdapterView:
        """Start training the subject's LoRA adapter in the background (status ``training``)."""
        require(actor.role, Action.train_adapter)
        return await self.parts.training.start(actor, req)

    async def adapter(self, actor: PrincipalView, adapter_id: str) -> AdapterView:
        require(actor.role, Action.read_adapters)
        view = await self.parts.adapters.get(adapter_id)
        if actor.role == Role.requester and view.principal_id != actor.id:
            # A requester sees only its own adapters; another's is not even said to exist.
            raise NotFoundError(f"no adapter {adapter_id}", code=codes.ADAPTER_NOT_FOUND)
        return view

    async def wait_adapter(
        self, actor: PrincipalView, adapter_id: str, on_progress: Progress | None = None
    ) -> AdapterView:
        """Wait for a training job of this process to end, reporting its progress."""
        await self.adapter(actor, adapter_id)
        return await self.parts.training.wait(adapter_id, on_progress)

    async def list_adapters(self, actor: PrincipalView, identity_id: str | None = None) -> list[AdapterView]:
        require(actor.role, Action.read_adapters)
        if identity_id is not None:
            await self.subjects.get(identity_id)  # 404 for an unknown identity
        views = await self.parts.adapters.list(identity_id)
        if actor.role == Role.requester:
            views = [v for v in views if v.principal_id == actor.id]
        return views

    async def delete_adapter(self, actor: PrincipalView, adapter_id: str) -> None:
        require(actor.role, Action.delete_adapter)
        await self.parts.adapters.delete(adapter_id, actor.id)

    # -- audit and provenance -------------------------------------------------------------------

    async def verify_audit(self, actor: PrincipalView) -> ChainReport:
        require(actor.role, Action.read_audit)
        return await self.audit.verify()

    async def audit_events(self, actor: PrincipalView) -> AsyncIterator[ChainedEvent]:
        require(actor.role, Action.read_audit)
        async for event in self.audit.events():
            yield event

    async def verify_provenance(self, actor: PrincipalView, data: bytes) -> ProvenanceReport:
        """C2PA state, decoded watermark, and the generation record the mark resolves to."""
        require(actor.role, Action.verify_provenance)
        (image,) = await self._decode([data])
        return await self.parts.provenance.verify(data, image, sniff_mime(data))
