"""Liveness is constant; readiness checks the database, the models and the signed audit head
without re-computing the chain (that is ``audit verify``'s job)."""

from __future__ import annotations

from sqlalchemy import text

from consentry.gateway.gate import Gate
from consentry.gateway.storage.principals import LOCAL_ACTOR
from tests.gateway.conftest import AppClient


async def execute(gate: Gate, statement: str) -> None:
    async with gate.db.session() as session, session.begin():
        await session.execute(text(statement))


async def test_live_and_ready(db_client: AppClient) -> None:
    live = await db_client.get("/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await db_client.get("/health/ready")
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "ok", body
    assert body["database"] and body["models_loaded"] and body["audit_head_valid"]
    assert (await db_client.get("/health")).json()["status"] == "ok"


async def test_ready_fails_on_a_forged_head_but_does_not_walk_the_chain(db_client: AppClient) -> None:
    gate: Gate = db_client.app.state["consentry_gate"]
    for n in range(3):
        await gate.create_principal(LOCAL_ACTOR, f"p{n}", "requester")
    # An edit in the middle of the chain: the full verification finds it, the probe does not
    # look (it reads the head only, so its cost does not grow with the log).
    await execute(gate, "UPDATE audit_events SET kind = 'edited' WHERE seq = 2")
    assert not (await gate.verify_audit(LOCAL_ACTOR)).ok
    assert (await db_client.get("/health/ready")).status_code == 200
    # A head whose signature does not verify takes the replica out of rotation.
    # Flip the first hex digit (a fixed 'f' left a head that already began with 'f' unchanged).
    flipped = "CASE WHEN substr(hash, 1, 1) = '0' THEN '1' ELSE '0' END || substr(hash, 2)"
    await execute(gate, f"UPDATE audit_head SET hash = {flipped}")
    r = await db_client.get("/health/ready")
    assert r.status_code == 503 and r.json()["audit_head_valid"] is False, r.text
    assert "audit head" in r.json()["problems"][0]
    assert (await db_client.get("/health/live")).status_code == 200
