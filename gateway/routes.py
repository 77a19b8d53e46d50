"""HTTP routes of the Consentry API. Each decodes its input, calls one Gate method, and renders
the result as its declared response model; authorization is the Gate's."""

from __future__ import annotations

import base64
from typing import Any

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.types import ControllerRouterHandler

from consentry.gateway.gate import Gate
from consentry.gateway.health import Readiness
from consentry.gateway.metrics import CONTENT_TYPE
from consentry.gateway.schemas import (
    AdapterBody,
    AdapterListOut,
    AdapterOut,
    AuditReportOut,
    ChallengeOut,
    DeletedOut,
    EnrollBody,
    ErasedOut,
    GenerateBody,
    GenerateOut,
    GrantBody,
    GrantOut,
    IdentityOut,
    IssuedKeyOut,
    LiveOut,
    PrincipalBody,
    ProvenanceOut,
    ReadyOut,
    RevokedOut,
    VerdictOut,
    VerifyBody,
)
from consentry.gateway.storage.adapters import AdapterView
from consentry.gateway.storage.principals import PrincipalView
from consentry.policies.consent import Attestation

PathId = Parameter(max_length=40)


async def provide_principal(request: Request[Any, Any, Any], gate: Gate) -> PrincipalView:
    """The caller, from ``X-API-Key`` or, as OpenAI clients send it, ``Authorization: Bearer``."""
    secret = request.headers.get("x-api-key")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if secret is None and scheme.lower() == "bearer" and token.strip():
        secret = token.strip()
    return await gate.authenticate(secret)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", summary="Liveness: the process answers (constant time, no I/O)")
    async def live(self) -> LiveOut:
        return LiveOut(status="ok")

    @get("/ready", summary="Readiness: database reachable, models loaded, signed audit head valid")
    async def ready(self, gate: Gate) -> Response[ReadyOut]:
        return _readiness(await gate.readiness(), gate)

    @get("/", summary="Readiness, with what is loaded (same checks as /health/ready)")
    async def health(self, gate: Gate) -> Response[ReadyOut]:
        return _readiness(await gate.readiness(), gate)


def _readiness(r: Readiness, gate: Gate) -> Response[ReadyOut]:
    body = ReadyOut(
        status="ok" if r.ready else "unavailable",
        database=r.database,
        models_loaded=r.models_loaded,
        audit_head_valid=r.audit_head,
        audit_events=r.audit_seq,
        problems=list(r.problems),
        embedder=gate.analyzer.embedder.name if r.models_loaded else None,
        generator=gate.generator.name,
        untrained_model=gate.generator.untrained if r.models_loaded else None,
    )
    # 503 takes a replica out of a load balancer's rotation until it is ready again.
    return Response(body, status_code=200 if r.ready else 503)


@get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    media_type=MediaType.TEXT,
    sync_to_thread=False,
    tags=["health"],
)
def metrics(gate: Gate) -> Response[bytes]:
    return Response(gate.parts.metrics.render(), media_type=CONTENT_TYPE)


class AdminController(Controller):
    path = "/v1/principals"
    tags = ["admin"]

    @post("/", summary="Create a principal and its first API key (shown once)")
    async def create(self, data: PrincipalBody, gate: Gate, principal: PrincipalView) -> IssuedKeyOut:
        issued = await gate.create_principal(principal, data.name, data.role)
        return IssuedKeyOut(id=issued.principal.id, name=data.name, role=data.role, api_key=issued.secret)

    @post("/{principal_id:str}/keys", summary="Issue another API key for a principal (shown once)")
    async def issue_key(
        self, gate: Gate, principal: PrincipalView, principal_id: str = PathId
    ) -> IssuedKeyOut:
        issued = await gate.issue_key(principal, principal_id)
        return IssuedKeyOut(id=issued.key_id, principal_id=principal_id, api_key=issued.secret)


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["admin"]

    @post("/{key_id:str}/revoke", summary="Revoke an API key; it fails from the next request on")
    async def revoke_key(self, gate: Gate, principal: PrincipalView, key_id: str = PathId) -> RevokedOut:
        await gate.revoke_key(principal, key_id)
        return RevokedOut(id=key_id, revoked=True)


class ConsentController(Controller):
    path = "/v1"
    tags = ["consent"]

    @post(
        "/enrollments/challenges",
        summary="A one-time self-enrollment challenge: head poses to show, a nonce, two minutes",
    )
    async def challenge(self, gate: Gate, principal: PrincipalView) -> ChallengeOut:
        issued = await gate.enrollment_challenge(principal)
        return ChallengeOut(
            challenge_id=issued.id, nonce=issued.nonce, expires_at=issued.expires_at, poses=list(issued.poses)
        )

    @post(
        "/identities", summary="Enroll a protected identity from photos (with a liveness answer: self-enroll)"
    )
    async def enroll(self, data: EnrollBody, gate: Gate, principal: PrincipalView) -> IdentityOut:
        req = data.to_request()
        identity = await gate.enroll(principal, req)
        # A liveness answer either enrolled a self-attested identity or raised.
        attested = (
            Attestation.operator_attested if req.liveness is None else Attestation.self_attested_with_liveness
        )
        return IdentityOut(id=identity.id, label=identity.label, status=identity.status, attestation=attested)

    @post("/identities/{identity_id:str}/erase", summary="Erase an identity (crypto-shred its templates)")
    async def erase(self, gate: Gate, principal: PrincipalView, identity_id: str = PathId) -> ErasedOut:
        counts = await gate.erase(principal, identity_id)
        return ErasedOut(id=identity_id, erased=True, **counts)

    @post("/grants", summary="Record a subject's consent for a principal")
    async def grant(self, data: GrantBody, gate: Gate, principal: PrincipalView) -> GrantOut:
        g = await gate.grant(principal, data.to_request())
        return GrantOut(
            id=g.id,
            identity_id=g.identity_id,
            principal_id=g.principal_id,
            purposes=list(g.purposes),
            expires_at=g.expires_at,
            max_uses=g.max_uses,
            attestation=Attestation(g.attestation),
        )

    @post("/grants/{grant_id:str}/revoke", summary="Revoke a grant; effective on the next request")
    async def revoke(self, gate: Gate, principal: PrincipalView, grant_id: str = PathId) -> RevokedOut:
        await gate.revoke(principal, grant_id)
        return RevokedOut(id=grant_id, revoked=True)


class GenerateController(Controller):
    path = "/v1/generate"
    tags = ["generation"]

    @post("/", summary="Generate images of a consenting subject through the gate")
    async def generate(self, data: GenerateBody, gate: Gate, principal: PrincipalView) -> GenerateOut:
        release = await gate.generate(principal, data.to_request())
        return GenerateOut(
            record_id=release.record_id,
            watermark=release.watermark,
            model=release.model,
            untrained=release.untrained,
            mode=release.mode,
            adapter_id=release.adapter_id,
            audit_seq=release.audit_seq,
            stages={name: VerdictOut(**v) for name, v in release.decision.as_dict().items()},
            images=[base64.b64encode(b).decode() for b in release.images],
            media_type="image/png",
        )


def adapter_out(view: AdapterView) -> AdapterOut:
    return AdapterOut(**view.as_dict())


class AdapterController(Controller):
    path = "/v1"
    tags = ["adapters"]

    @post(
        "/identities/{identity_id:str}/adapters",
        status_code=202,
        summary="Train the subject's LoRA adapter in the background (needs an adapter_training grant)",
    )
    async def train(
        self, data: AdapterBody, gate: Gate, principal: PrincipalView, identity_id: str = PathId
    ) -> AdapterOut:
        return adapter_out(await gate.train_adapter(principal, data.to_request(identity_id)))

    @get("/adapters", summary="Adapters (a requester sees its own), optionally of one identity")
    async def list_adapters(
        self,
        gate: Gate,
        principal: PrincipalView,
        identity_id: str | None = Parameter(default=None, max_length=40),
    ) -> AdapterListOut:
        return AdapterListOut(
            adapters=[adapter_out(v) for v in await gate.list_adapters(principal, identity_id)]
        )

    @get("/adapters/{adapter_id:str}", summary="An adapter and its training job's status and progress")
    async def show(self, gate: Gate, principal: PrincipalView, adapter_id: str = PathId) -> AdapterOut:
        return adapter_out(await gate.adapter(principal, adapter_id))

    @delete("/adapters/{adapter_id:str}", status_code=200, summary="Delete an adapter and its weights")
    async def remove(self, gate: Gate, principal: PrincipalView, adapter_id: str = PathId) -> DeletedOut:
        await gate.delete_adapter(principal, adapter_id)
        return DeletedOut(id=adapter_id, deleted=True)


class ProvenanceController(Controller):
    path = "/v1"
    tags = ["provenance"]

    @post("/provenance/verify", summary="C2PA state, watermark and generation record of an image")
    async def verify(self, data: VerifyBody, gate: Gate, principal: PrincipalView) -> ProvenanceOut:
        report = await gate.verify_provenance(principal, data.to_bytes())
        return ProvenanceOut(**report.as_dict())

    @get("/audit/verify", summary="Re-compute the audit hash chain")
    async def audit_verify(self, gate: Gate, principal: PrincipalView) -> AuditReportOut:
        return AuditReportOut(**(await gate.verify_audit(principal)).as_dict())


CONTROLLERS: list[ControllerRouterHandler] = [
    metrics,
    HealthController,
    AdminController,
    KeysController,
    ConsentController,
    GenerateController,
    AdapterController,
    ProvenanceController,
]
