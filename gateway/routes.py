"""HTTP routes. Each parses its input, calls one Gate method, and renders the result."""

from __future__ import annotations

import base64
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter

from consentry.gateway.schemas import (
    EnrollRequest,
    GenerateRequest,
    GrantRequest,
    PrincipalRequest,
    VerifyRequest,
)
from consentry.gateway.service import Gate
from consentry.gateway.storage.principals import PrincipalView
from consentry.policies.roles import Action, require


async def provide_principal(request: Request[Any, Any, Any], gate: Gate) -> PrincipalView:
    return await gate.principals.authenticate(request.headers.get("x-api-key"))


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", summary="Liveness and readiness")
    async def health(self, gate: Gate) -> dict[str, Any]:
        report = await gate.audit.verify()
        return {
            "status": "ok" if report.ok else "degraded",
            "embedder": gate.analyzer.embedder.name,
            "generator": gate.generator.name,
            "untrained_model": gate.generator.untrained,
            "audit_events": report.events,
        }


class AdminController(Controller):
    path = "/v1/principals"
    tags = ["admin"]

    @post("/", summary="Create a principal and its first API key (shown once)")
    async def create(self, data: PrincipalRequest, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        require(principal.role, Action.manage_principals)
        issued = await gate.principals.create(data.name, data.role, actor=principal.id)
        return {"id": issued.principal.id, "name": data.name, "role": data.role, "api_key": issued.secret}

    @post("/{principal_id:str}/keys", summary="Issue another API key for a principal (shown once)")
    async def issue_key(
        self, gate: Gate, principal: PrincipalView, principal_id: str = Parameter(max_length=40)
    ) -> dict[str, Any]:
        require(principal.role, Action.manage_principals)
        issued = await gate.principals.issue_key(principal_id, actor=principal.id)
        return {"id": issued.key_id, "principal_id": principal_id, "api_key": issued.secret}


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["admin"]

    @post("/{key_id:str}/revoke", summary="Revoke an API key; it fails from the next request on")
    async def revoke_key(
        self, gate: Gate, principal: PrincipalView, key_id: str = Parameter(max_length=40)
    ) -> dict[str, Any]:
        require(principal.role, Action.manage_principals)
        await gate.principals.revoke_key(key_id, actor=principal.id)
        return {"id": key_id, "revoked": True}


class ConsentController(Controller):
    path = "/v1"
    tags = ["consent"]

    @post("/identities", summary="Enroll a protected identity from photos")
    async def enroll(self, data: EnrollRequest, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        identity = await gate.enroll(principal, data)
        return {"id": identity.id, "label": identity.label, "status": identity.status}

    @post("/identities/{identity_id:str}/erase", summary="Erase an identity (crypto-shred its templates)")
    async def erase(
        self, gate: Gate, principal: PrincipalView, identity_id: str = Parameter(max_length=40)
    ) -> dict[str, Any]:
        counts = await gate.erase(principal, identity_id)
        return {"id": identity_id, "erased": True, **counts}

    @post("/grants", summary="Record a subject's consent for a principal")
    async def grant(self, data: GrantRequest, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        g = await gate.grant(principal, data)
        return {
            "id": g.id,
            "identity_id": g.identity_id,
            "principal_id": g.principal_id,
            "purposes": list(g.purposes),
            "expires_at": g.expires_at.isoformat() if g.expires_at else None,
            "max_uses": g.max_uses,
        }

    @post("/grants/{grant_id:str}/revoke", summary="Revoke a grant; effective on the next request")
    async def revoke(
        self, gate: Gate, principal: PrincipalView, grant_id: str = Parameter(max_length=40)
    ) -> dict[str, Any]:
        await gate.revoke(principal, grant_id)
        return {"id": grant_id, "revoked": True}


class GenerateController(Controller):
    path = "/v1/generate"
    tags = ["generation"]

    @post("/", summary="Generate images of a consenting subject through the gate")
    async def generate(self, data: GenerateRequest, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        release = await gate.generate(principal, data)
        return {
            "record_id": release.record_id,
            "watermark": release.watermark,
            "model": release.model,
            "untrained": release.untrained,
            "audit_seq": release.audit_seq,
            "stages": release.decision.as_dict(),
            "images": [base64.b64encode(b).decode() for b in release.images],
            "media_type": "image/png",
        }


class ProvenanceController(Controller):
    path = "/v1"
    tags = ["provenance"]

    @post("/provenance/verify", summary="C2PA state, watermark and generation record of an image")
    async def verify(self, data: VerifyRequest, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        require(principal.role, Action.verify_provenance)
        return await gate.verify_provenance(data.image)

    @get("/audit/verify", summary="Re-compute the audit hash chain")
    async def audit_verify(self, gate: Gate, principal: PrincipalView) -> dict[str, Any]:
        return (await gate.verify_audit(principal)).as_dict()


CONTROLLERS = [
    HealthController,
    AdminController,
    KeysController,
    ConsentController,
    GenerateController,
    ProvenanceController,
]
