"""The machinery of ``test_readme_commands.py``: steps, the in-process runner, and the helpers
that are no README command (input files, a stripped copy, the server, tampering).

A step names the README command it runs (its fixed words) or ``None`` for a helper. ``run_script``
runs the steps once, in order, recording each one's exit code and output: a crash or an argparse
exit is recorded, not raised, so one broken command fails its own test and the rest still run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from consentry.gateway.cli import main

Ctx = dict[str, Any]  # what the steps learn and make: ids, keys, paths
HOST = "127.0.0.1"
SERVE_DEADLINE_S = 120.0  # for ``consentry serve`` to load its models and answer /health
PAYLOAD = "00112233aabbccdd"


@dataclass
class Result:
    argv: list[str]
    code: int | None = None
    out: str = ""
    err: str = ""
    error: str | None = None  # a traceback, or why the step could not run

    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


Check = Callable[[Result, Ctx], None]


@dataclass(frozen=True)
class Step:
    name: str
    command: tuple[str, ...] | None  # the README command's fixed words; None: a helper of the test
    args: Callable[[Ctx], list[str]] = lambda c: []
    code: int = 0  # the exit code the README promises
    check: Check | None = None  # run by the step's test, after the whole script
    keep: Check | None = None  # run at once: reads what later steps need into the context
    env: Callable[[Ctx], dict[str, str]] = lambda c: {}
    run: Callable[[Ctx, list[str]], Result] | None = None  # default: ``main(argv)`` in-process


def lfw(c: Ctx, person: str, n: int) -> str:
    return str(c["faces"] / "lfw" / person / f"{person}_{n:04d}.jpg")


def run_main(step: Step, c: Ctx, argv: list[str]) -> Result:
    result, out, err = Result(argv), io.StringIO(), io.StringIO()
    extra = step.env(c)
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            result.code = main(argv)
    except SystemExit as exc:  # argparse refused the command line
        result.code = exc.code if isinstance(exc.code, int) else 2
    except Exception:
        result.error = traceback.format_exc()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result.out, result.err = out.getvalue(), err.getvalue()
    return result


def found(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return m


def one_json(r: Result) -> dict[str, Any]:
    [line] = r.lines()
    return json.loads(line)


# -- helpers of the test (no README command) ------------------------------------------------------


def prepare_inputs(c: Ctx, argv: list[str]) -> Result:
    """Inputs made under tmp at test time: a consent text, a 512² PNG to watermark, a flat photo
    library of 2 people (4 photos each, renamed and interleaved), and a calibration tree
    DIR/<person>/<photo> of 2 people x 3 photos (``calibrate`` needs faces of at least 2 people
    and somebody with 2 photos: ``detectors/calibration_run.py``)."""
    tmp: Path = c["tmp"]
    (tmp / "consent.txt").write_text("I, Tony, agree to portraits of me until 2099.\n")
    Image.open(lfw(c, "Tony_Blair", 7)).resize((512, 512)).save(tmp / "photo.png")
    (tmp / "library").mkdir()
    for n in range(1, 5):
        for i, person in enumerate(("Colin_Powell", "Donald_Rumsfeld")):
            shutil.copy(lfw(c, person, n), tmp / "library" / f"IMG_{n}{i}.jpg")
    for person in ("George_W_Bush", "Gerhard_Schroeder"):
        (tmp / "calib" / person).mkdir(parents=True)
        for n in (1, 2, 3):
            shutil.copy(lfw(c, person, n), tmp / "calib" / person)
    return Result(argv, code=0)


def strip_metadata(c: Ctx, argv: list[str]) -> Result:
    """A JPEG re-encode of the released PNG: no C2PA manifest, no metadata, only pixels."""
    c["stripped"] = c["tmp"] / "stripped.jpg"
    Image.open(c["released"]).convert("RGB").save(c["stripped"], "JPEG", quality=90)
    assert b"c2pa" not in c["stripped"].read_bytes().lower()
    return Result(argv, code=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(c: Ctx, argv: list[str]) -> Result:
    """``consentry serve`` in its own process group, until ``GET /health`` answers (bounded);
    then a few requests: docs, OpenAPI, roles, every route without a key, a second key. The
    answers go to ``c["http"]``."""
    log = open(c["tmp"] / "serve.log", "wb")  # noqa: SIM115 (closed by stop_server or the fixture)
    proc = subprocess.Popen(
        [sys.executable, "-m", "consentry.gateway.cli", *argv],
        env=dict(os.environ), cwd=c["tmp"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    c["server"], c["server_log"] = proc, log
    url, end = c["url"], time.monotonic() + SERVE_DEADLINE_S
    while True:
        if proc.poll() is not None:
            return Result(argv, code=proc.returncode, err=(c["tmp"] / "serve.log").read_text()[-3000:])
        if time.monotonic() > end:
            return Result(argv, error=f"no answer on {url}/health within {SERVE_DEADLINE_S:.0f} s")
        try:
            if (health := httpx.get(f"{url}/health", timeout=5)).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    key = {name: {"X-API-Key": c[f"key_{name}"]} for name in ("admin", "studio", "ops", "auditor")}
    with httpx.Client(base_url=url, timeout=60) as client:
        audit = "/v1/audit/verify"
        new = {"name": "web", "role": "requester"}
        http: dict[str, Any] = {
            "health": health.json(),
            "docs": client.get("/schema").status_code,
            "openapi": client.get("/schema/openapi.json").json(),
            "audit": {who: client.get(audit, headers=h).status_code for who, h in key.items()},
            "audit_no_key": client.get(audit).status_code,
            "principals": {
                "ops": client.post("/v1/principals", json=new, headers=key["ops"]).status_code,
                "admin": client.post("/v1/principals", json=new, headers=key["admin"]).status_code,
            },
        }
        # Every route, with no key at all (path parameters filled with a placeholder).
        http["no_key"] = {
            (method.upper(), path): without_key(client, method.upper(), re.sub(r"\{[^}]*\}", "x", path))
            for path, item in http["openapi"]["paths"].items()
            if not path.startswith("/schema")
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        }
        http["adapter"] = train_over_http(client, c, key)
        issued = client.post(f"/v1/principals/{c['id_admin']}/keys", headers=key["admin"]).json()
        c["extra_key_id"], c["extra_key"] = issued["id"], issued["api_key"]
        http["extra_before"] = client.get(audit, headers={"X-API-Key": c["extra_key"]}).status_code
    c["http"] = http
    return Result(argv, code=0, out=json.dumps(http["health"]))


def train_over_http(client: httpx.Client, c: Ctx, key: dict[str, dict[str, str]]) -> dict[str, Any]:
    """POST /v1/identities/{id}/adapters (202), then GET /v1/adapters/{id} until the background
    job ends (bounded); list, another requester's view, and DELETE by role."""
    body = {"steps": 2, "rank": 2, "prior_images": 0}
    started = client.post(f"/v1/identities/{c['idn2']}/adapters", json=body, headers=key["studio"])
    assert started.status_code == 202, started.text
    adapter = started.json()
    end, final = time.monotonic() + 120, adapter
    while final["status"] == "training" and time.monotonic() < end:
        time.sleep(0.2)
        final = client.get(f"/v1/adapters/{adapter['id']}", headers=key["studio"]).json()
    listing = client.get("/v1/adapters", params={"identity_id": c["idn2"]}, headers=key["ops"])
    listed = listing.json()["adapters"]
    others = client.post(
        "/v1/principals", json={"name": "other-app", "role": "requester"}, headers=key["admin"]
    )
    other = {"X-API-Key": others.json()["api_key"]}
    return {
        "started": adapter,
        "final": final,
        "listed": adapter["id"] in {a["id"] for a in listed},
        "others_see": client.get(f"/v1/adapters/{adapter['id']}", headers=other).status_code,
        "delete": {
            who: client.delete(f"/v1/adapters/{adapter['id']}", headers=key[who]).status_code
            for who in ("studio", "ops")
        },
    }


def without_key(client: httpx.Client, method: str, path: str) -> int:
    """The status of a request with no key: a JSON body, or a multipart one for a route that
    refuses JSON as malformed before it looks at the caller."""
    code = client.request(method, path, json={} if method != "GET" else None).status_code
    if code in (400, 415, 422) and method != "GET":
        code = client.request(
            method, path, files={"image": ("x.png", b"\x89PNG")}, data={"prompt": "p"}
        ).status_code
    return code


def after_key_revoked(r: Result, c: Ctx) -> None:
    headers = {"X-API-Key": c["extra_key"]}
    c["http"]["extra_after"] = httpx.get(
        f"{c['url']}/v1/audit/verify", headers=headers, timeout=60
    ).status_code


def stop_server(c: Ctx, argv: list[str]) -> Result:
    """SIGTERM, as a service manager stops it."""
    proc: subprocess.Popen[bytes] = c.pop("server")
    proc.send_signal(signal.SIGTERM)
    try:
        c["serve_exit"] = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        c["serve_exit"] = proc.wait(timeout=10)
    c["server_log"].close()
    return Result(argv, code=0)


def tamper_audit(c: Ctx, argv: list[str]) -> Result:
    """Edit one stored audit event behind the gate's back (for ``audit verify``'s exit 4)."""
    con = sqlite3.connect(c["data"] / "consentry.db")
    with con:
        con.execute("UPDATE audit_events SET body = replace(body, 'requester', 'admin') WHERE seq = 2")
    con.close()
    return Result(argv, code=0)


def run_script(steps: list[Step], c: Ctx) -> dict[str, Result]:
    """Each step once, in order; ``keep`` runs only after a step that did what it should."""
    results: dict[str, Result] = {}
    for step in steps:
        try:
            argv = [*(step.command or ()), *step.args(c)]
        except KeyError as exc:
            results[step.name] = Result([], error=f"not run: needs {exc} from an earlier step")
            continue
        try:
            r = step.run(c, argv) if step.run else run_main(step, c, argv)
        except Exception:
            r = Result(argv, error=traceback.format_exc())
        results[step.name] = r
        if step.keep and r.code == step.code and r.error is None:
            try:
                step.keep(r, c)
            except Exception:
                r.error = f"reading its output failed:\n{traceback.format_exc()}"
    return results


@contextmanager
def server_reaped(c: Ctx) -> Iterator[None]:
    """Whatever happens, no ``consentry serve`` outlives the script."""
    try:
        yield
    finally:
        if "server" in c:
            os.killpg(c["server"].pid, signal.SIGKILL)
            c["server"].wait(timeout=10)
            c["server_log"].close()
