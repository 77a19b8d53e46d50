"""A real gateway for end-to-end tests: real models, tiny pipeline, dev keys, SQLite.

Built once per test module (models load once), in a temporary data directory.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from gateway.plugin import ConsentryConfig, create_app
from gateway.service import Gate
from generation.tiny import build_tiny_pipeline
from policies.config import Settings
from provenance.keys import init_dev_keys


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
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    app = create_app(ConsentryConfig(settings=settings))
    async with AsyncTestClient(app=app, timeout=120) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin_key(client: AsyncTestClient) -> str:
    # Bootstrapping the first admin is a local act (``consentry principal add``), not an HTTP one.
    gate: Gate = client.app.state["consentry_gate"]
    return (await gate.principals.create("root-admin", "admin")).secret
