"""Schemathesis against the app's own OpenAPI, on a real server on loopback: 0 server errors, and
every response conforms to the response model its route declares.

Bounded for CI (a few examples per operation, fixed seed). Requests carry an admin key and a
requester key in turn, so both the role checks and the handlers behind them are exercised.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def make_keys(settings: Settings) -> dict[str, str]:
    gate = await open_gate(settings)
    try:
        return {
            role: (await gate.principals.create(f"st-{role}", role)).secret for role in ("admin", "requester")
        }
    finally:
        await gate.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dev_keys: Path):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("st"), model_dir=tiny_model, keys_dir=dev_keys, device="cpu"
    )
    keys = asyncio.run(make_keys(settings))
    port = free_port()
    config = uvicorn.Config(
        create_app(ConsentryConfig(settings=settings)), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", keys
    srv.should_exit = True
    thread.join(30)


@pytest.mark.parametrize("role", ["admin", "requester"])
def test_no_server_errors(server, role: str, tmp_path: Path) -> None:
    base, keys = server
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{base}/schema/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "6",
        "--seed",
        "1",
        "--request-timeout",
        "60",
        "--header",
        f"X-API-Key: {keys[role]}",
        "--generation-database",
        ":memory:",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = done.stdout[-3000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 100, summary
