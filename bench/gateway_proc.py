"""Helpers for benchmarks that drive a real gateway: ``consentry`` subprocesses, a server in its
own process group, and throw-away PostgreSQL databases on the loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"  # loopback only, by design
PG_ADMIN = "postgresql://127.0.0.1:5432/test"


async def pg_database(create: str | None = None, drop: str | None = None) -> bool:
    """Create or drop a database on the loopback server; False when none answers."""
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        sql = f'CREATE DATABASE "{create}"' if create else f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)'
        await admin.execute(sql)
    finally:
        await admin.close()
    return True


def cli(env: dict[str, str], cwd: Path, *argv: str, ok: tuple[int, ...] = (0,)) -> str:
    cmd = [sys.executable, "-m", "consentry.gateway.cli", *argv]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode not in ok:
        raise RuntimeError(f"consentry {argv[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


class Server:
    """``consentry serve`` in its own process group, so that it and its workers die together."""

    def __init__(self, env: dict[str, str], cwd: Path, workers: int, name: str = "server") -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        self.url, self.workers, self.log = f"http://{HOST}:{port}", workers, cwd / f"{name}.log"
        argv = ["serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consentry.gateway.cli", *argv],
                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    async def ready(self) -> None:
        """Wait until every worker finished its lifespan (models loaded), not just the first:
        connections opened while only one is up would all land on that one."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while True:
                log = self.log.read_text(errors="replace")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}: {log[-2000:]}")
                try:
                    healthy = (await client.get("/health")).status_code == 200
                except httpx.HTTPError:
                    healthy = False
                if healthy and log.count("Application startup complete") >= self.workers:
                    return
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the group (workers shut down cleanly), SIGKILL if that takes over 20 s."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=wait)


def run_under_deadline(
    run: Callable[[Any, Path, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
    args: Any,
    work: Path,
) -> dict[str, Any]:
    """Run ``run(args, work, state)`` with an overall deadline (``args.deadline_s``); whatever
    happens, stop the servers it started (``state["servers"]``) and drop its PostgreSQL database
    (``state["pg_db"]``)."""
    state: dict[str, Any] = {}

    def deadline(*_: object) -> None:  # raised in the main thread, wherever it waits
        raise TimeoutError(f"the overall deadline of {args.deadline_s:g} s passed")

    signal.signal(signal.SIGALRM, deadline)
    signal.alarm(int(args.deadline_s))
    try:
        return asyncio.run(run(args, work, state))
    except BaseException:
        print(f"run failed; data directory kept at {work}", file=sys.stderr)
        raise
    finally:
        signal.alarm(0)
        for server in state.get("servers", []):
            server.stop()
        if "pg_db" in state:
            asyncio.run(asyncio.wait_for(pg_database(drop=state["pg_db"]), 30))
