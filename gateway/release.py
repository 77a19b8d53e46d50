"""The last step: commit the release with its audit event, then let the files out.

What is audited for a generation is built here, once, for releases and refusals alike.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.flow import GateJob, Refusal, ReleasedImages
from consentry.gateway.storage.audit_log import AuditLog
from consentry.gateway.storage.subjects import Subjects
from consentry.gateway.storage.tables import GenerationRecord
from consentry.generation.base import GenerationOutput
from consentry.policies import codes
from consentry.policies.consent import Consent
from consentry.policies.decision import Decision, Verdict
from consentry.provenance.audit import ChainedEvent
from consentry.provenance.outputs import SignedImages

RELEASED = "generation.released"
REFUSED = "generation.refused"


def audit_body(job: GateJob, decision: Decision, *, keep_prompt: bool) -> dict[str, Any]:
    """The audited facts of one generation request: who, whom, why, and every stage's verdict.

    The prompt is kept only as a hash unless the deployment asks for it in clear.
    """
    body: dict[str, Any] = {
        "request_id": job.request_id,
        "principal_id": job.principal.id,
        "identity_id": job.subject.id if job.subject else None,
        "purpose": job.purpose,
        "prompt_sha256": hashlib.sha256(job.generation.prompt.encode()).hexdigest(),
        "references": len(job.generation.references),
        "mode": job.generation.mode.value,
        "adapter_id": job.adapter_id,
        "decision": decision.code,
        "stages": decision.as_dict(),
    }
    if keep_prompt:
        body["prompt"] = job.generation.prompt
    return body


class ReleaseStage:
    """Counts the grant's use, stores the generation record and appends the release event in one
    transaction; only then are the files written (atomically: no half-written image)."""

    def __init__(self, audit: AuditLog, output_dir: Path, *, keep_prompt: bool) -> None:
        self.audit = audit
        self.output_dir = output_dir
        self.keep_prompt = keep_prompt

    async def run(
        self,
        job: GateJob,
        consent: Consent,
        generated: GenerationOutput,
        signed: SignedImages,
        decided: Decision,
    ) -> ReleasedImages:
        grant = consent.grant
        paths = tuple(self.output_dir / f"{job.request_id}_{i}.png" for i in range(len(signed.files)))
        body = audit_body(job, decided, keep_prompt=self.keep_prompt) | {
            "watermark": job.payload.hex(),
            "model": generated.model,
            "untrained": generated.untrained,
        }

        async def write(session: AsyncSession, event: ChainedEvent) -> None:
            # Counted atomically with the audit event: a grant used up or revoked by a concurrent
            # request makes this transaction fail, and nothing of it is kept.
            if grant is not None and not await Subjects.consume(session, grant.id):
                raise Refusal(
                    Verdict.refuse(
                        codes.CONSENT_EXHAUSTED, f"grant {grant.id} was used up or revoked by another request"
                    )
                )
            session.add(
                GenerationRecord(
                    id=job.request_id,
                    watermark=job.payload.hex(),
                    principal_id=job.principal.id,
                    identity_id=job.subject.id if job.subject else None,
                    grant_id=grant.id if grant else None,
                    prompt_sha256=body["prompt_sha256"],
                    model=generated.model,
                    untrained=generated.untrained,
                    manifest=signed.manifest,
                    outputs=[str(p) for p in paths],
                    audit_seq=event.seq,
                    created_at=datetime.now(UTC),
                )
            )

        event = await self.audit.append(RELEASED, body, also=write)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for path, data in zip(paths, signed.files, strict=True):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return ReleasedImages(record_id=job.request_id, audit_seq=event.seq, files=signed.files, paths=paths)
