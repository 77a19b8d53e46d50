"""A console on a real gate with the package's fakes (no face or diffusion model loads): real
storage (SQLite and PostgreSQL), audit chain, watermarking, signing, sessions.

``ConsoleWorld`` holds the app client, one API key per role, an enrolled identity whose label
carries ``<script>``, and a live grant to the requester.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from PIL import Image

from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.requests import EnrollmentRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.gateway.testing import FingerprintAnalyzer, ManualClock, PhotoGenerator, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.provenance.keys import init_dev_keys
from tests.gateway.conftest import AppClient, serve

XSS_LABEL = '<script>window.pwned=1</script>Alice "A" & co'
XSS_PROMPT = "a portrait <script>alert('prompt')</script> of <b>her</b>"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class ConsoleWorld:
    client: AppClient
    gate: Gate
    clock: ManualClock
    keys: dict[str, str]
    key_ids: dict[str, str]
    ids: dict[str, str]
    photos: dict[str, Image.Image]
    base: str = "/console"
    extra: dict[str, Any] = field(default_factory=dict)

    async def generate(self, prompt: str = "a portrait", subject: bool = True) -> httpx.Response:
        body: dict[str, Any] = {"prompt": prompt}
        if subject:
            body |= {"subject_id": self.ids["alice"], "purpose": "portrait"}
        return await self.client.post(
            "/v1/generate", json=body, headers={"X-API-Key": self.keys["requester"]}
        )


@pytest.fixture(scope="session")
def console_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_dir = tmp_path_factory.mktemp("console-keys")
    init_dev_keys(keys_dir)
    return keys_dir


def world_photos(analyzer: FingerprintAnalyzer) -> dict[str, Image.Image]:
    photos = {}
    for n, who in enumerate(("alice", "bob")):
        for k in range(4):
            photos[f"{who}{k}"] = analyzer.register(synthetic_photo(500 + 10 * n + k), who)
    return photos


async def populate(
    gate: Gate, photos: dict[str, Image.Image]
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    keys, key_ids = {}, {}
    for role in ("admin", "operator", "auditor", "requester"):
        issued = await gate.create_principal(LOCAL_ACTOR, f"{role}-1", role)
        keys[role], key_ids[role] = issued.secret, issued.key_id
        key_ids[f"{role}_principal"] = issued.principal.id
    alice = await gate.enroll(
        LOCAL_ACTOR,
        EnrollmentRequest(label=XSS_LABEL, photos=tuple(png(photos[f"alice{k}"]) for k in range(3))),
    )
    bob = await gate.enroll(
        LOCAL_ACTOR, EnrollmentRequest(label="Bob", photos=tuple(png(photos[f"bob{k}"]) for k in range(3)))
    )
    grant = await gate.grant(
        LOCAL_ACTOR,
        GrantRequest(
            identity_id=alice.id,
            principal=key_ids["requester_principal"],
            purposes=(Purpose.portrait,),
            attested_by="consent desk",
            consent_text_sha256=hashlib.sha256(b"I consent").hexdigest(),
            deny_terms=("uniform",),
        ),
    )
    return keys, key_ids, {"alice": alice.id, "bob": bob.id, "grant": grant.id}


@pytest_asyncio.fixture
async def world(database_url: str, tmp_path: Path, console_keys: Path) -> AsyncIterator[ConsoleWorld]:
    analyzer = FingerprintAnalyzer()
    photos = world_photos(analyzer)
    clock = ManualClock()
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, keys_dir=console_keys, device="cpu", audit_prompts=True
    )

    async def factory(s: Settings) -> Gate:
        return await open_gate(s, analyzer=analyzer, generator=PhotoGenerator(photos["alice3"]))

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory, console_clock=clock))
    async with serve(app) as client:
        gate: Gate = app.state["consentry_gate"]
        keys, key_ids, ids = await populate(gate, photos)
        yield ConsoleWorld(client, gate, clock, keys, key_ids, ids, photos)


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def new_browser(world: ConsoleWorld) -> httpx.AsyncClient:
    """A client with its own cookie jar, on the world's running app."""
    transport = httpx.ASGITransport(app=world.client.app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def plant(client: httpx.AsyncClient, name: str, value: str) -> None:
    """Put a cookie in ``client``'s jar as the console's own would be (httpx files a dotless
    host's cookies under ``HOST.local``)."""
    client.cookies.set(name, value, domain="testserver.local", path="/console")


async def sign_in(
    world: ConsoleWorld, role: str, client: httpx.AsyncClient | None = None
) -> httpx.AsyncClient:
    """Sign ``client`` (default: a new cookie jar on the world's app) in as ``role``."""
    c = client or new_browser(world)
    form = await c.get(f"{world.base}/login")
    r = await c.post(
        f"{world.base}/login", data={"api_key": world.keys[role], "csrf": csrf_of(form.text), "next": ""}
    )
    assert r.status_code == 303, r.text
    return c
