"""Consentry as a Litestar plugin: drop it into any Litestar app, or use ``create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.plugins import InitPluginProtocol
from litestar.types import ControllerRouterHandler

from consentry.gateway.gate import Gate
from consentry.gateway.logs import configure_json_logging, request_id_middleware
from consentry.gateway.openai_api import OpenAIImagesController
from consentry.gateway.problems import HANDLERS
from consentry.gateway.public.service import STATE_KEY as PUBLIC_STATE_KEY
from consentry.gateway.public.service import open_public
from consentry.gateway.public_api import public_router
from consentry.gateway.routes import CONTROLLERS, provide_principal
from consentry.policies.config import Settings


@dataclass
class ConsentryConfig:
    """How the plugin builds and exposes the gate."""

    settings: Settings = field(default_factory=Settings)
    """Deployment settings (``consentry.toml`` + ``CONSENTRY_*`` by default)."""
    gate_factory: Callable[[Settings], Awaitable[Gate]] | None = None
    """Builds the Gate at startup; default loads the configured models (``gateway.wiring.open_gate``)."""
    state_key: str = "consentry_gate"
    """Key of the Gate in ``app.state``."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body accepted (base64 images are 4/3 of their file size)."""
    path_prefix: str = "/"
    """Where the gate's routes are mounted in the host app, e.g. ``/consentry`` (then
    ``/consentry/v1/generate``, ``/consentry/health/ready``, ...)."""
    console_clock: Callable[[], datetime] | None = None
    """Clock of the console's sessions (idle expiry); None: the system clock (tests inject one)."""


class ConsentryPlugin(InitPluginProtocol):
    def __init__(self, config: ConsentryConfig | None = None) -> None:
        self.config = config or ConsentryConfig()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        cfg = self.config

        @asynccontextmanager
        async def lifespan(app: Litestar) -> AsyncIterator[None]:
            # Models load once per process, here, not per request.
            if cfg.gate_factory is None:
                from consentry.gateway.wiring import open_gate, quiet_libraries

                quiet_libraries()
                factory: Callable[[Settings], Awaitable[Gate]] = open_gate
            else:
                factory = cfg.gate_factory
            gate = await factory(cfg.settings)
            try:
                await gate.warm()
                public = open_public(gate) if cfg.settings.public_verification else None
            except BaseException:
                await gate.close()
                raise
            app.state[cfg.state_key] = gate
            app.state[PUBLIC_STATE_KEY] = public
            try:
                yield
            finally:
                if public is not None:
                    await public.close()
                await gate.close()

        def provide_gate(state: State) -> Gate:
            return state[cfg.state_key]

        # A router carries the body limit: Litestar ignores request_max_body_size set by plugins
        # on the app config (2.x reads its constructor argument instead).
        handlers: list[ControllerRouterHandler] = [*CONTROLLERS, OpenAIImagesController]
        if cfg.settings.console_enabled:
            from consentry.gateway.console import console_router

            handlers.append(console_router(cfg.path_prefix, cfg.state_key, cfg.console_clock))
        app_config.route_handlers.append(
            Router(path=cfg.path_prefix, route_handlers=handlers, request_max_body_size=cfg.max_body_bytes)
        )
        if cfg.settings.public_verification:
            # Public verification: no key, rate-limited per client address (gateway/public_api.py).
            app_config.route_handlers.append(public_router(cfg.path_prefix, cfg.settings))
        app_config.dependencies["gate"] = Provide(provide_gate, sync_to_thread=False)
        app_config.dependencies["principal"] = Provide(provide_principal)
        app_config.exception_handlers.update(HANDLERS)
        app_config.middleware.append(request_id_middleware)
        if cfg.settings.log_format == "json":
            configure_json_logging(cfg.settings.log_level)
        app_config.lifespan.append(lifespan)
        return app_config


def create_app(config: ConsentryConfig | None = None) -> Litestar:
    return Litestar(
        plugins=[ConsentryPlugin(config)],
        openapi_config=OpenAPIConfig(title="Consentry", version="0.1.0", path="/schema"),
    )
