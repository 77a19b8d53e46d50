"""A real gateway for end-to-end tests: real models, tiny pipeline, dev keys, SQLite.

Built once per test module (models load once), in a temporary data directory.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from litestar import Litestar

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.generation.base import Generator
from consentry.generation.tiny import build_tiny_pipeline
from consentry.policies.config import Settings
from consentry.provenance.keys import init_dev_keys


class AppClient(httpx.AsyncClient):
    """An HTTP client bound to an in-process app whose lifespan runs in the test's own event loop
    (Litestar's AsyncTestClient runs the lifespan in a second loop, which asyncpg pools reject)."""

    def __init__(self, app: Litestar) -> None:
        # httpx types the app with plain-dict scope and messages; Litestar's own ``__call__``
        # takes its TypedDicts, which mypy cannot match against those (it is a valid ASGI app).
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        super().__init__(transport=transport, base_url="http://testserver", timeout=120)
        self.app = app


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[AppClient]:
    """Run the app's ASGI lifespan in one background task of the current loop (so fixtures may
    set up and tear down in different tasks), then yield a client bound to the app."""
    inbox: asyncio.Queue[dict] = asyncio.Queue()
    outbox: asyncio.Queue[dict] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    # Plain dicts stand in for Litestar's lifespan TypedDicts (as a server's would).
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        await task
        raise RuntimeError(f"app failed to start: {started.get('message')}")
    try:
        async with AppClient(app) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def dev_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_dir = tmp_path_factory.mktemp("keys")
    init_dev_keys(keys_dir)
    return keys_dir


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dev_keys: Path) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return Settings(data_dir=data, model_dir=tiny_model, keys_dir=dev_keys, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(settings: Settings) -> AsyncIterator[AppClient]:
    app = create_app(ConsentryConfig(settings=settings))
    async with serve(app) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_key(client: AppClient) -> str:
    # Bootstrapping the first admin is a local act (``consentry principal add``), not an HTTP one.
    gate: Gate = client.app.state["consentry_gate"]
    return (await gate.principals.create("root-admin", "admin")).secret


@pytest.fixture(scope="session")
def shared_models(tiny_model: Path) -> Iterator[tuple[FaceAnalyzer, Generator]]:
    """One analyzer and one generator for tests that open many gates (one per database)."""
    from consentry.gateway.wiring import build_analyzer, build_generator

    settings = Settings(model_dir=tiny_model, device="cpu")
    generator = build_generator(settings)
    yield build_analyzer(settings), generator
    generator.close()


@pytest_asyncio.fixture
async def db_client(
    database_url: str,
    tmp_path: Path,
    tiny_model: Path,
    dev_keys: Path,
    shared_models: tuple[FaceAnalyzer, Generator],
) -> AsyncIterator[AppClient]:
    """A gateway on a fresh SQLite or PostgreSQL database (parametrized), sharing loaded models."""
    from consentry.gateway.wiring import open_gate

    analyzer, generator = shared_models
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, model_dir=tiny_model, keys_dir=dev_keys, device="cpu"
    )

    async def factory(s: Settings) -> Gate:
        return await open_gate(s, analyzer=analyzer, generator=generator)

    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    async with serve(app) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def role_keys(client: AppClient, admin_key: str) -> dict[str, str]:
    """API keys of an operator (``op``), a requester (``P``) and an auditor (``aud``)."""
    out = {}
    for name, role in [("op", "operator"), ("P", "requester"), ("aud", "auditor")]:
        r = await client.post(
            "/v1/principals", json={"name": name, "role": role}, headers={"X-API-Key": admin_key}
        )
        out[name] = r.json()["api_key"]
    return out


async def audit_event_count(client: AppClient, keys: dict[str, str]) -> int:
    """How many audit events exist: 'nothing stored' checks compare this before and after."""
    return (await client.get("/v1/audit/verify", headers={"X-API-Key": keys["aud"]})).json()["events"]
