"""What every command shares: settings, the local actor, reading files, opening the gate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError, ConsentryError

if TYPE_CHECKING:
    from consentry.gateway.gate import Gate
    from consentry.gateway.storage.principals import PrincipalView

__all__ = [
    "load_settings",
    "local_actor",
    "parse_time",
    "quiet_model_libraries",
    "read_file",
    "read_files",
    "with_gate",
]


def local_actor() -> PrincipalView:
    """The operator at this terminal, the actor of every command. Imported when a command asks
    the gate, not with this module: the principals store imports SQLAlchemy and Alembic, which
    commands that fail on their input, or never open the database, should not wait for."""
    from consentry.gateway.storage.principals import LOCAL_ACTOR

    return LOCAL_ACTOR


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConsentryError(f"invalid configuration: {exc}", code=codes.CONFIG_INVALID) from exc


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}", code=codes.INPUT_FILE_UNREADABLE) from exc


def read_files(paths: list[str] | None) -> tuple[bytes, ...]:
    return tuple(read_file(p) for p in paths or [])


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadInputError(f"{text!r} is not an ISO 8601 time", code=codes.INPUT_TIME_INVALID) from exc


def quiet_model_libraries() -> None:
    """No progress bars from diffusers and transformers. Called by the commands that load a
    model, once their input is checked: it imports those libraries, which the others skip."""
    from consentry.gateway.wiring import quiet_libraries

    quiet_libraries()


async def with_gate(fn: Callable[[Gate], Awaitable[int]], *, models: bool = False) -> int:
    """Run ``fn`` with an open gate, closed afterwards. ``models``: the command will load a
    model (enroll, generate, train), so the model libraries are quietened first."""
    from consentry.gateway.wiring import open_gate

    if models:
        quiet_model_libraries()
    gate = await open_gate(load_settings())
    try:
        return await fn(gate)
    finally:
        await gate.close()
