"""The Gate: every operation of Consentry, shared by the HTTP routes and the CLI.

It owns the loaded models, the stores and the stage pipeline. Routes and commands only parse
input, call one method, and render the result.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.detectors.enrollment import enrollment_templates
from consentry.detectors.images import decode_image
from consentry.gateway.index_cache import IndexCache
from consentry.gateway.pipeline import GateContext, Pipeline
from consentry.gateway.ratelimit import TokenBuckets
from consentry.gateway.schemas import EnrollRequest, GenerateRequest, GrantRequest, decode_b64
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.db import Database
from consentry.gateway.storage.principals import Principals, PrincipalView
from consentry.gateway.storage.records import Records
from consentry.gateway.storage.subjects import IdentityView, Subjects
from consentry.gateway.storage.tables import GenerationRecord
from consentry.gateway.storage.vault import TemplateVault, load_master_key
from consentry.gateway.verification import ProvenanceVerifier
from consentry.generation.base import Generator
from consentry.policies.config import Settings
from consentry.policies.consent import GrantTerms
from consentry.policies.decision import Decision
from consentry.policies.errors import BadInputError, NotFoundError, RefusedError, StageError
from consentry.policies.roles import Action, require
from consentry.provenance.audit import ChainedEvent, ChainReport
from consentry.provenance.audit_signing import AuditSigner
from consentry.provenance.watermark import Watermarker


class ModelSource(Protocol):
    """Where the Gate gets its models (see gateway.wiring.Models)."""

    def analyzer(self) -> FaceAnalyzer: ...
    def generator(self) -> Generator: ...
    def close(self) -> None: ...


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
    """Operations over the stores; models come from ``models`` and load on first use (the HTTP
    lifespan warms them at startup, so no request pays for a load)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        models: ModelSource,
        pipeline_factory: Callable[[Gate], Pipeline],
    ) -> None:
        self.settings = settings
        self.db = db
        assert settings.keys_dir is not None
        self.audit = AuditLog(
            db, AuditSigner.load_or_create(settings.keys_dir), settings.audit_checkpoint_every
        )
        self.principals = Principals(db, self.audit)
        self.records = Records(db)
        self.subjects = Subjects(db, TemplateVault(load_master_key(settings.keys_dir)), self.audit)
        self.models = models
        self.watermarker = Watermarker()
        self.provenance = ProvenanceVerifier(settings, self.records, self.watermarker)
        self.rate_limits = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self._pipeline_factory = pipeline_factory

    @property
    def analyzer(self) -> FaceAnalyzer:
        return self.models.analyzer()

    @property
    def generator(self) -> Generator:
        return self.models.generator()

    @cached_property
    def index(self) -> IndexCache:
        embedder = self.analyzer.embedder
        return IndexCache(self.subjects, embedder.name, str(getattr(embedder, "device", "cpu")))

    @cached_property
    def pipeline(self) -> Pipeline:
        return self._pipeline_factory(self)

    async def warm(self) -> None:
        """Load every model now, in a worker thread."""
        await asyncio.to_thread(lambda: (self.analyzer, self.generator))

    async def close(self) -> None:
        self.models.close()
        await self.db.dispose()

    def _decode_all(self, items: list[str], what: str) -> list[Image.Image]:
        """Decode base64 uploads under the configured limits; errors name the item (1-based)."""
        s = self.settings
        return [
            decode_image(
                decode_b64(item, f"{what} {i}"), max_bytes=s.max_image_bytes, max_pixels=s.max_image_pixels
            )
            for i, item in enumerate(items, start=1)
        ]

    # -- enrollment and consent -------------------------------------------------------------

    async def enroll(self, actor: PrincipalView, req: EnrollRequest) -> IdentityView:
        require(actor.role, Action.enroll)
        s = self.settings
        images = self._decode_all(req.photos, "photo")
        analyzed = await asyncio.to_thread(self.analyzer.analyze, images)
        templates = enrollment_templates(
            analyzed,
            min_photos=s.min_enroll_photos,
            min_face_px=s.min_enroll_face_px,
            threshold=s.match_threshold,
            existing=await self.index.get(),
        )
        details = {"embedder": self.analyzer.embedder.name, "photos": len(images)}
        return await self.subjects.enroll(
            req.label, templates, self.analyzer.embedder.name, actor.id, details
        )

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

    # -- generation ---------------------------------------------------------------------------

    async def generate(self, principal: PrincipalView, req: GenerateRequest) -> Release:
        require(principal.role, Action.generate)
        self.rate_limits.take(principal.id)
        s = self.settings
        # Input problems are answered before anything is stored or audited.
        subject = await self.subjects.get(req.subject_id)
        if len(req.references) > s.max_references:
            raise BadInputError(
                f"at most {s.max_references} reference images", code="input.too_many_references"
            )
        refs = self._decode_all(req.references, "reference")
        request_id = f"gen_{secrets.token_hex(8)}"
        ctx = GateContext(
            request_id=request_id,
            principal=principal,
            subject=subject,
            purpose=req.purpose.value,
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            seed=req.seed,
            steps=req.steps or s.generation_steps,
            width=req.width or s.image_size,
            height=req.height or s.image_size,
            num_images=req.num_images,
            references=refs,
            watermark=secrets.token_bytes(8),
        )
        decision = await self.pipeline.run(ctx)
        body = {
            "request_id": request_id,
            "principal_id": principal.id,
            "identity_id": subject.id,
            "purpose": ctx.purpose,
            "prompt_sha256": hashlib.sha256(req.prompt.encode()).hexdigest(),
            "references": len(refs),
            "decision": decision.code,
            "stages": decision.as_dict(),
        }
        if s.audit_prompts:
            body["prompt"] = req.prompt
        if not decision.allowed:
            await self._refuse(body, decision)
        return await self._release(ctx, body, decision)

    async def _refuse(self, body: dict[str, Any], decision: Decision) -> None:
        event = await self.audit.append("generation.refused", body)
        name, verdict = decision.refusal or ("gate", None)
        reason = verdict.reason if verdict else "refused"
        # A stage that could not decide (fault) is the server's problem (503), not a rule (403).
        error_cls = StageError if verdict is not None and verdict.fault else RefusedError
        raise error_cls(
            f"{name}: {reason}", code=decision.code, stages=decision.as_dict(), audit_seq=event.seq
        )

    async def _release(self, ctx: GateContext, body: dict[str, Any], decision: Decision) -> Release:
        assert ctx.grant is not None and self.settings.output_dir is not None
        out_dir = self.settings.output_dir
        paths = tuple(out_dir / f"{ctx.request_id}_{i}.png" for i in range(len(ctx.signed)))

        async def write(session: Any, event: ChainedEvent) -> None:
            # The use is counted atomically with the audit event: a grant exhausted or revoked by
            # a concurrent request makes this one fail, and the whole transaction rolls back.
            if not await Subjects.consume(session, ctx.grant.id):  # type: ignore[union-attr]
                raise RefusedError("the grant was used up or revoked meanwhile", code="consent.exhausted")
            session.add(
                GenerationRecord(
                    id=ctx.request_id,
                    watermark=ctx.watermark.hex(),
                    principal_id=ctx.principal.id,
                    identity_id=ctx.subject.id,
                    grant_id=ctx.grant.id,  # type: ignore[union-attr]
                    prompt_sha256=body["prompt_sha256"],
                    model=ctx.model,
                    untrained=ctx.untrained,
                    manifest=ctx.manifest,
                    outputs=[str(p) for p in paths],
                    audit_seq=event.seq,
                    created_at=datetime.now(UTC),
                )
            )

        body = {**body, "watermark": ctx.watermark.hex(), "model": ctx.model, "untrained": ctx.untrained}
        try:
            event = await self.audit.append("generation.released", body, also=write)
        except RefusedError as exc:
            body["decision"] = exc.code
            await self._refuse(body, decision)
            raise  # pragma: no cover  (_refuse always raises)
        # Only now, with the audit event committed, may the image leave. Write atomically so a
        # crash never leaves a half-written file behind.
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, data in zip(paths, ctx.signed, strict=True):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Release(
            ctx.request_id,
            ctx.watermark.hex(),
            tuple(ctx.signed),
            paths,
            decision,
            event.seq,
            ctx.model,
            ctx.untrained,
        )

    # -- audit ----------------------------------------------------------------------------

    async def verify_audit(self, actor: PrincipalView | None) -> ChainReport:
        if actor is not None:
            require(actor.role, Action.read_audit)
        return await self.audit.verify()

    # -- provenance -------------------------------------------------------------------------

    async def verify_provenance(self, image_b64: str) -> dict[str, Any]:
        """C2PA state, decoded watermark, and the generation record the mark resolves to."""
        return await self.provenance.verify(decode_b64(image_b64, "image"))
