"""An existing Litestar app that puts Consentry in front of its own image routes.

Run it with uvicorn (settings come from ``consentry.toml`` and ``CONSENTRY_*`` as for
``consentry serve``)::

    uvicorn --factory docs.plugin_example:create_app

The app keeps its own routes (``/``, ``/studio/...``); the gate's routes are mounted under
``/consentry`` (``/consentry/v1/generate``, ``/consentry/v1/images/generations``,
``/consentry/health/ready``, ...). The plugin's lifespan loads the models once at startup.
"""

from __future__ import annotations

from litestar import Litestar, get

from consentry.gateway.plugin import ConsentryConfig, ConsentryPlugin
from consentry.policies.config import Settings


@get("/")
async def index() -> dict[str, str]:
    return {"app": "my studio", "gate": "/consentry"}


@get("/studio/status")
async def studio_status() -> dict[str, bool]:
    return {"open": True}


def create_app(settings: Settings | None = None) -> Litestar:
    gate = ConsentryPlugin(ConsentryConfig(settings=settings or Settings(), path_prefix="/consentry"))
    return Litestar(route_handlers=[index, studio_status], plugins=[gate])
