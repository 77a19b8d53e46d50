"""The plugin example in docs/ boots: the host app keeps its routes, the gate's are under its
prefix, and a release through the prefixed route works."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.policies.config import Settings
from tests.conftest import REPO_ROOT
from tests.gateway.conftest import serve


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plugin_example", REPO_ROOT / "docs" / "plugin_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Litestar resolves the handlers' annotations through it
    spec.loader.exec_module(module)
    return module


async def test_example_app_serves_its_routes_and_the_gate_under_a_prefix(
    tmp_path: Path, tiny_model: Path, dev_keys: Path
) -> None:
    settings = Settings(data_dir=tmp_path, model_dir=tiny_model, keys_dir=dev_keys, device="cpu")
    app = load_example().create_app(settings)
    async with serve(app) as client:
        assert (await client.get("/")).json() == {"app": "my studio", "gate": "/consentry"}
        assert (await client.get("/studio/status")).json() == {"open": True}
        ready = await client.get("/consentry/health/ready")
        assert ready.status_code == 200 and ready.json()["models_loaded"] is True
        assert (await client.get("/v1/generate")).status_code == 404  # only under the prefix
        gate = app.state["consentry_gate"]
        key = (await gate.create_principal(LOCAL_ACTOR, "P", "requester")).secret
        r = await client.post(
            "/consentry/v1/generate",
            json={"prompt": "a lighthouse"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["stages"]["release"]["allowed"] is True
        paths = (await client.get("/schema/openapi.json")).json()["paths"]
        assert "/consentry/v1/images/generations" in paths and "/studio/status" in paths
