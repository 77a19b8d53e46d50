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
from typing import NoReturn

from PIL import Image

from consentry.detectors.analyzer import Analyzer
from consentry.detectors.enrollment import enrollment_templates
from consentry.detectors.images import decode_image, sniff_mime
from consentry.gateway.admission import Admission
from consentry.gateway.flow import GateJob, GenerateFlow
from consentry.gateway.health import Readiness, check_readiness
from consentry.gateway.index_cache import IndexCache
from consentry.gateway.logs import record_id
from consentry.gateway.metrics import GateMetrics
from consentry.gateway.models import Loadable
from consentry.gateway.ratelimit import RateLimiter
from consentry.gateway.release import REFUSED, audit_body
from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.principals import IssuedKey, Principals, PrincipalView
from consentry.gateway.storage.records import Records
from consentry.gateway.storage.subjects import IdentityView, Subjects
from consentry.generation.base import GenerationJob, Generator
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import GrantTerms
from consentry.policies.decision import Decision
from consentry.policies.errors import BadInputError, GateBusyError, NotFoundError, RefusedError, StageError
from consentry.policies.roles import Action, require
from consentry.provenance.audit import ChainedEvent, ChainReport
from consentry.provenance.verification import ProvenanceReport, ProvenanceVerifier

log = logging.getLogger("consentry.gate")


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
        for model in self.parts.models:
            model.close()
        await self.parts.rate_limits.close()
        await self.parts.db.dispose()

    async def _decode(self, files: Sequence[bytes]) -> list[Image.Image]:
        """Decode uploads under the configured limits, off the event loop."""
        s = self.settings

        def decode_all() -> list[Image.Image]:
            return [
                decode_image(d, max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels) for d in files
            ]

        return await asyncio.to_thread(decode_all)

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

    async def enroll(self, actor: PrincipalView, req: EnrollmentRequest) -> IdentityView:
        require(actor.role, Action.enroll)
        s = self.settings
        images = await self._decode(req.photos)
        analyzed = await asyncio.to_thread(self.analyzer.analyze, images)
        existing = await self.parts.index.get()
        templates = await asyncio.to_thread(
            enrollment_templates,
            analyzed,
            min_photos=s.min_enroll_photos,
            min_face_px=s.min_enroll_face_px,
            threshold=s.match_threshold,
            existing=existing,
        )
        embedder = self.analyzer.embedder.name
        details = {"embedder": embedder, "photos": len(images)}
        return await self.subjects.enroll(req.label, templates, embedder, actor.id, details)

    async def grant(self, actor: PrincipalView, req: GrantRequest) -> GrantTerms:
        require(actor.role, Action.grant)
        try:
            grantee = await self.principals.get(req.principal)
        except NotFoundError:
            grantee = await self.principals.by_name(req.principal)
        evidence = {
            "attested_by": req.attested_by,
            "attested_at": datetime.now(UTC).isoformat(),
            "consent_text_sha256": req.consent_text_sha256,
        }
        return await self.subjects.grant(
            identity_id=req.identity_id,
            principal_id=grantee.id,
            purposes=[p.value for p in req.purposes],
            deny_terms=list(req.deny_terms),
            expires_at=req.expires_at,
            max_uses=req.max_uses,
            evidence=evidence,
            actor=actor.id,
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
            ),
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
