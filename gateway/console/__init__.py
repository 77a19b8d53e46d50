"""The trust-and-safety console: server-rendered pages at ``/console`` for admins, operators and
auditors, signed in with an API key exchanged for a server-side session.

:func:`console_router` builds the routes; the plugin mounts them under its ``path_prefix``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

from litestar import Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from sqlalchemy.ext.asyncio import AsyncSession

from consentry.gateway.console.controller import ConsoleController
from consentry.gateway.console.service import ConsoleService
from consentry.gateway.console.web import STATIC, error_handler
from consentry.gateway.storage.console_sessions import system_clock
from consentry.policies.errors import ConsentryError

__all__ = ["ConsoleService", "console_router"]


def console_router(
    prefix: str,
    gate_key: str,
    clock: Callable[[], datetime] | None = None,
    state_key: str = "consentry_console",
) -> Router:
    """The console under ``prefix`` + ``/console``; its service is made on first use from the
    Gate at ``app.state[gate_key]``."""
    base = prefix.rstrip("/") + "/console"

    def provide_console(state: State) -> ConsoleService:
        service = state.get(state_key)
        if service is None or service.gate is not state[gate_key]:
            service = ConsoleService(state[gate_key], clock or system_clock)
            state[state_key] = service
        return service

    async def provide_db(console: ConsoleService) -> AsyncIterator[AsyncSession]:
        # One database session per request, for the viewer's session and every read of the
        # page: one pool check-out (one pre-ping), not one per query. Closed (rolled back)
        # once the response is built, before it is sent.
        async with console.gate.db.session() as session:
            yield session

    def provide_base() -> str:
        return base

    handle = error_handler(base)
    return Router(
        path="/console",
        route_handlers=[
            ConsoleController,
            create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False),
        ],
        dependencies={
            "console": Provide(provide_console, sync_to_thread=False),
            "db": Provide(provide_db),
            "console_base": Provide(provide_base, sync_to_thread=False),
        },
        exception_handlers={ConsentryError: handle, Exception: handle},
        include_in_schema=False,
    )
