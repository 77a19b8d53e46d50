"""Every command of README.md's "## Commands" table, run as written, in order, in one fresh data
directory (``CONSENTRY_DATA_DIR``, CPU), with real photos; ``serve`` as a real subprocess.

``STEPS`` is the script: each step names the README command it runs (its fixed words) or is a
helper of the test (``command=None``). The module fixture runs all steps once, recording each
one's exit code and output (a crash or an argparse exit is recorded, not raised); then one test
per step checks its exit code and what the README says it prints or does. Which commands and
flags the README documents is read from README.md: a documented command with no step fails,
and so does a step whose command the README no longer documents.
"""

from __future__ import annotations

import csv
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
import tomllib
import traceback
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from consentry.gateway.cli import main
from tests.gateway.test_readme import flags, openapi_routes, readme_commands, readme_routes

pytestmark = pytest.mark.slow

Ctx = dict[str, Any]
HOST = "127.0.0.1"
SERVE_DEADLINE_S = 120.0


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


@dataclass(frozen=True)
class Step:
    name: str
    command: tuple[str, ...] | None  # the README command's fixed words; None: a helper of the test
    args: Callable[[Ctx], list[str]] = lambda c: []
    code: int = 0  # the exit code the README promises
    check: Callable[[Result, Ctx], None] | None = None  # after the whole run
    keep: Callable[[Result, Ctx], None] | None = None  # right after the step: values later steps use
    env: Callable[[Ctx], dict[str, str]] = lambda c: {}
    run: Callable[[Step, Ctx, list[str]], Result] | None = None  # default: ``main(argv)`` in-process
    argv: list[str] = field(default_factory=list)


def lfw(c: Ctx, person: str, n: int) -> str:
    return str(c["faces"] / "lfw" / person / f"{person}_{n:04d}.jpg")


def run_main(step: Step, c: Ctx, argv: list[str]) -> Result:
    result = Result(argv)
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in step.env(c)}
    os.environ.update(step.env(c))
    try:
        with redirect_stdout(out), redirect_stderr(err):
            result.code = main(argv)
    except SystemExit as exc:  # argparse: a usage error
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


# -- helpers of the test (no README command) ----------------------------------------------------


def prepare_inputs(step: Step, c: Ctx, argv: list[str]) -> Result:
    """Input files made at test time under tmp: a consent text, a 512² PNG to watermark, a flat
    photo library of 2 people (4 photos each, renamed), and a calibration tree DIR/<person>/."""
    tmp: Path = c["tmp"]
    (tmp / "consent.txt").write_text("I, Tony, agree to portraits of me until 2099.\n")
    Image.open(lfw(c, "Tony_Blair", 7)).resize((512, 512)).save(tmp / "photo.png")
    library = tmp / "library"
    library.mkdir()
    for n in range(1, 5):
        for i, person in enumerate(("Colin_Powell", "Donald_Rumsfeld")):
            shutil.copy(lfw(c, person, n), library / f"IMG_{n}{i}.jpg")
    for person in ("George_W_Bush", "Gerhard_Schroeder"):
        (tmp / "calib" / person).mkdir(parents=True)
        for n in (1, 2, 3):
            shutil.copy(lfw(c, person, n), tmp / "calib" / person)
    return Result(argv, code=0)


def strip_metadata(step: Step, c: Ctx, argv: list[str]) -> Result:
    """A JPEG re-encode of the released PNG: no C2PA manifest, no metadata, only pixels."""
    stripped = c["tmp"] / "stripped.jpg"
    Image.open(c["released"]).convert("RGB").save(stripped, "JPEG", quality=90)
    assert b"c2pa" not in stripped.read_bytes().lower()
    c["stripped"] = stripped
    return Result(argv, code=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(step: Step, c: Ctx, argv: list[str]) -> Result:
    """``consentry serve`` in its own process group; waits for ``GET /health`` (bounded), then
    talks to it: OpenAPI, keys, roles. The HTTP answers go into ``c['http']`` for the checks."""
    log = open(c["tmp"] / "serve.log", "wb")  # noqa: SIM115 (closed by stop_server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "consentry.gateway.cli", *argv],
        env=dict(os.environ), cwd=c["tmp"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    c["server"], c["server_log"] = proc, log
    url = c["url"]
    end = time.monotonic() + SERVE_DEADLINE_S
    while True:
        if proc.poll() is not None:
            return Result(argv, code=proc.returncode, err=(c["tmp"] / "serve.log").read_text()[-3000:])
        if time.monotonic() > end:
            return Result(argv, error=f"no answer on {url}/health within {SERVE_DEADLINE_S:.0f} s")
        try:
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    admin = {"X-API-Key": c["key_admin"]}
    with httpx.Client(base_url=url, timeout=60) as client:
        http = {
            "health": health.json(),
            "docs": client.get("/schema").status_code,
            "openapi": client.get("/schema/openapi.json").json(),
            "no_key": client.get("/v1/audit/verify").status_code,
            "admin": client.get("/v1/audit/verify", headers=admin).json(),
            "auditor": client.get("/v1/audit/verify", headers={"X-API-Key": c["key_auditor"]}).status_code,
            "requester": client.get("/v1/audit/verify", headers={"X-API-Key": c["key_studio"]}).status_code,
        }
        issued = client.post(f"/v1/principals/{c['id_admin']}/keys", headers=admin).json()
        c["extra_key_id"], c["extra_key"] = issued["id"], issued["api_key"]
        http["extra_before"] = client.get("/v1/audit/verify", headers={"X-API-Key": c["extra_key"]}).status_code
    c["http"] = http
    return Result(argv, code=0, out=json.dumps(http["health"]))


def after_key_revoked(r: Result, c: Ctx) -> None:
    c["http"]["extra_after"] = httpx.get(
        f"{c['url']}/v1/audit/verify", headers={"X-API-Key": c["extra_key"]}, timeout=60
    ).status_code


def stop_server(step: Step, c: Ctx, argv: list[str]) -> Result:
    """SIGTERM, as a service manager stops it; a clean shutdown exits 0."""
    proc: subprocess.Popen[bytes] = c.pop("server")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=10)
    c["server_log"].close()
    c["serve_exit"] = code
    return Result(argv, code=0)


def tamper_audit(step: Step, c: Ctx, argv: list[str]) -> Result:
    """Edit one stored audit event behind the gate's back (for ``audit verify``'s exit 4)."""
    con = sqlite3.connect(c["data"] / "consentry.db")
    with con:
        con.execute("UPDATE audit_events SET body = replace(body, 'requester', 'admin') WHERE seq = 2")
    con.close()
    return Result(argv, code=0)


# -- what each command's output is checked for ---------------------------------------------------


def one_json(r: Result) -> dict[str, Any]:
    [line] = r.lines()
    return json.loads(line)


def json_is(expected: Callable[[Ctx], dict[str, Any]]) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        assert one_json(r) == expected(c)

    return check


def keep_keys(r: Result, c: Ctx) -> None:
    c["wm_key"] = re.search(r"watermark key (wmk_\w+) created", r.out).group(1)  # type: ignore[union-attr]
    c["ca_pem"] = (c["data"] / "keys" / "ca.cert.pem").read_bytes()


def check_keys_init(r: Result, c: Ctx) -> None:
    assert f"in {c['data'] / 'keys' / 'watermark'}" in r.out and "Back it up" in r.out
    assert f"development CA and ES256 signing certificate written to {c['data'] / 'keys'}" in r.out


def check_keys_force(r: Result, c: Ctx) -> None:
    # --force replaces the signing keys, never the watermark keys
    assert f"watermark keys kept: 1 key(s), current {c['wm_key']}" in r.out
    assert "signing certificate written" in r.out and c["ca_pem_forced"] != c["ca_pem"]


def check_tiny(where: Callable[[Ctx], Path]) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        assert f"tiny UNTRAINED diffusers pipeline saved to {where(c)}" in r.out
        assert (where(c) / "model_index.json").is_file()

    return check


def principal(name: str, role: str) -> Step:
    def keep(r: Result, c: Ctx) -> None:
        c[f"id_{name}"], c[f"key_{name}"] = r.json()["id"], r.json()["api_key"]

    def check(r: Result, c: Ctx) -> None:
        shown = one_json(r)  # prints its API key once
        assert shown["id"].startswith("prn_") and shown["role"] == role
        assert shown["api_key"].startswith("csk_") and len(shown["api_key"]) > 30
        assert "cannot be shown again" in r.err

    return Step(f"principal_add_{name}", ("principal", "add"), lambda c: [name, "--role", role], check=check, keep=keep)


def keep_released(r: Result, c: Ctx) -> None:
    m = re.match(r"released (gen_\w+) watermark=(\w+) audit_seq=(\d+)", r.out)
    assert m, r.out
    c["record"], c["payload"] = m.group(1), m.group(2)
    c["released"] = Path(r.lines()[-1].strip())


def check_generate(r: Result, c: Ctx) -> None:
    assert "UNTRAINED model" in r.lines()[0]
    assert c["released"].is_file() and c["released"].parent == c["data"] / "outputs"
    assert c["released"].name.startswith(c["record"])


def refused(code: str) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        assert f"refused [{code}]" in r.err and r.out == ""

    return check


def verify_text(c2pa: str, file_key: str = "released", key: str = "wm_key") -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        assert r.lines()[0] == f"C2PA manifest: {c2pa}" or r.lines()[0].startswith(f"C2PA manifest: {c2pa} (")
        assert f"watermark: payload {c['payload']} " in r.out and f"key {c[key]})" in r.out
        assert f"generation record: {c['record']} at audit seq" in r.out

    return check


def verify_json(c2pa: str | None) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        report = r.json()
        assert report["c2pa"]["state"] == c2pa
        assert report["watermark"]["found"] is True and report["watermark"]["payload"] == c["payload"]
        assert report["record"]["id"] == c["record"]

    return check


def check_embed(payload: str | None) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:
        shown = one_json(r)
        assert re.fullmatch(r"[0-9a-f]{16}", shown["payload"]) and shown["key_id"] == c["wm_key"]
        assert payload in (None, shown["payload"]) and Path(shown["output"]).is_file()

    return check


def check_decode_text(key: str) -> Callable[[Result, Ctx], None]:
    def check(r: Result, c: Ctx) -> None:  # decode prints which key matched
        assert re.fullmatch(rf"watermark found: payload 00112233aabbccdd \(confidence [\d.]+, key {c[key]}\)", r.out.strip())

    return check


def check_decode_json(r: Result, c: Ctx) -> None:
    reading = one_json(r)
    assert reading["found"] is True and reading["payload"] == "00112233aabbccdd"
    assert reading["key_id"] == c["wm_key"] and reading["confidence"] > 0.5


def keep_export_all(r: Result, c: Ctx) -> None:
    c["events"] = len(r.lines())


def check_export_all(r: Result, c: Ctx) -> None:
    events = [json.loads(line) for line in r.lines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["kind"] for e in events][:4] == ["principal.created"] * 4 and len(events) >= 8


def check_audit_text(r: Result, c: Ctx) -> None:
    assert re.fullmatch(rf"audit chain intact; {c['events']} events; head [0-9a-f]{{16}}…", r.out.strip())


def check_audit_json(r: Result, c: Ctx) -> None:
    report = one_json(r)
    assert report["ok"] is True and report["events"] == c["events"]


def check_export_filtered(r: Result, c: Ctx) -> None:
    [event] = [json.loads(line) for line in r.lines()]
    assert event["body"]["decision"] == "released" and event["body"]["request_id"] == c["record"]


def check_export_csv(r: Result, c: Ctx) -> None:
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert r.lines()[0].startswith("seq,ts,kind,decision,principal_id")
    assert rows and {row["principal_id"] for row in rows} == {c["id_studio"]}
    assert {"released", "consent.prompt_denied"} <= {row["decision"] for row in rows}


def check_erase(r: Result, c: Ctx) -> None:
    shown = one_json(r)
    assert shown["id"] == c["idn"] and shown["erased"] is True


def check_erased_record(r: Result, c: Ctx) -> None:  # past records flagged
    assert r.json()["record"]["id"] == c["record"] and r.json()["record"]["subject_erased"] is True


def keep_rotation(r: Result, c: Ctx) -> None:
    c["wm_key_old"] = c["wm_key"]
    c["wm_key_new"] = re.search(r"current watermark key: (wmk_\w+)", r.out).group(1)  # type: ignore[union-attr]


def check_rotation(r: Result, c: Ctx) -> None:
    assert c["wm_key_new"] != c["wm_key_old"]
    assert f"2 key(s) decode: {c['wm_key_old']}" in r.out or f"2 key(s) decode: {c['wm_key_new']}" in r.out
    assert c["wm_key_old"] in r.out.splitlines()[1] and "Restart running gateways" in r.out


def check_library(r: Result, c: Ctx) -> None:
    shown = one_json(r)  # the one JSON line; the human-facing listing goes to stderr
    assert shown["id"].startswith("idn_") and shown["group"] == 1 and shown["photos"] == 4
    groups = int(re.search(r"(\d+) groups; sheets in", r.err).group(1))  # type: ignore[union-attr]
    assert groups == 2 and len(list((c["tmp"] / "sheets").iterdir())) == groups



def check_calibrate_json(r: Result, c: Ctx) -> None:
    result = r.json()
    assert (result["people"], result["photos"]) == (2, 6)
    assert result["pairs"] == {"genuine": 6, "impostor": 9} and 0 < result["threshold"] < 1
    assert result["report"] == str(c["tmp"] / "calib.html") and "config_written" in result
    assert (c["tmp"] / "calib.html").read_text().startswith("<!DOCTYPE html>")
    written = tomllib.loads((c["tmp"] / "calib.toml").read_text())
    assert written == {"match_threshold": result["threshold"]}
    assert result["config_written"] == str(c["tmp"] / "calib.toml")


def check_calibrate_text(r: Result, c: Ctx) -> None:
    # --write-config without FILE writes the file Settings reads ($CONSENTRY_CONFIG here)
    report = c["data"] / "calibration-report.html"
    assert f"report: {report}" in r.out and report.is_file()
    m = re.search(rf"match_threshold = ([\d.]+) written to {re.escape(str(c['tmp'] / 'own.toml'))}", r.out)
    assert m and tomllib.loads((c["tmp"] / "own.toml").read_text()) == {"match_threshold": float(m.group(1))}


def demo(name: str, args: Callable[[Ctx], list[str]], outputs: Callable[[Ctx], Path]) -> Step:
    """The demo recreates DATA_DIR/demo on each run: its released images are counted at once."""

    def keep(r: Result, c: Ctx) -> None:
        c[f"{name}_pngs"] = sorted(outputs(c).glob("*.png"))

    def check(r: Result, c: Ctx) -> None:
        for code in ("released", "consent.missing", "face.none", "consent.prompt_denied", "consent.revoked"):
            assert code in r.out
        assert "UNTRAINED" in r.out and "C2PA Trusted" in r.out and "audit chain: intact" in r.out
        assert "stage timings in milliseconds" in r.out
        [png] = c[f"{name}_pngs"]  # it writes the released image to DATA_DIR/demo/outputs or --out
        assert f"  {png}" in r.lines()

    return Step(name, ("demo",), args, check=check, keep=keep)


def check_serve(r: Result, c: Ctx) -> None:
    http = c["http"]
    assert http["health"]["status"] == "ok" and http["health"]["untrained_model"] is True
    assert http["docs"] == 200  # OpenAPI docs at /schema
    # The README's routes are what the served app documents.
    missing = readme_routes() - openapi_routes(http["openapi"])
    assert not missing, f"README routes the running gateway does not serve: {sorted(missing)}"
    # All routes but /health and /schema need X-API-Key; GET /v1/audit/verify is admin, auditor.
    assert http["no_key"] == 401 and http["admin"]["ok"] is True
    assert (http["auditor"], http["requester"]) == (200, 403)
    # SIGTERM: a graceful shutdown (uvicorn re-raises the signal after it, hence -SIGTERM)
    log = (c["tmp"] / "serve.log").read_text()
    assert c["serve_exit"] in (0, -signal.SIGTERM) and "Application shutdown complete." in log, log[-3000:]


def check_key_revoked(r: Result, c: Ctx) -> None:
    assert one_json(r) == {"id": c["extra_key_id"], "revoked": True}
    # it fails from the next request on
    assert (c["http"]["extra_before"], c["http"]["extra_after"]) == (200, 401)


def check_audit_broken(r: Result, c: Ctx) -> None:
    assert r.out.startswith("audit chain BROKEN at seq 2")


# -- the script, in order --------------------------------------------------------------------------

BLAIR = (2, 3, 4, 5)
GENERATE = ["--as", "studio", "--purpose", "portrait", "--prompt"]

STEPS = [
    Step("prepare_inputs", None, run=prepare_inputs),
    Step("keys_init", ("keys", "init"), check=check_keys_init, keep=keep_keys),
    Step("keys_init_force", ("keys", "init"), lambda c: ["--force"], check=check_keys_force,
         keep=lambda r, c: c.update(ca_pem_forced=(c["data"] / "keys" / "ca.cert.pem").read_bytes())),
    Step("models_tiny", ("models", "tiny"), check=check_tiny(lambda c: c["data"] / "models" / "tiny")),
    Step("models_tiny_dir", ("models", "tiny"), lambda c: [str(c["tmp"] / "tiny")],
         check=check_tiny(lambda c: c["tmp"] / "tiny")),
    principal("admin", "admin"),
    principal("studio", "requester"),
    principal("ops", "operator"),
    principal("auditor", "auditor"),
    Step("enroll_photos", ("enroll",), lambda c: ["--label", "Tony", *(lfw(c, "Tony_Blair", n) for n in BLAIR)],
         check=json_is(lambda c: {"id": c["idn"], "label": "Tony", "photos": 4}),
         keep=lambda r, c: c.update(idn=r.json()["id"])),
    Step("grant", ("grant",), lambda c: [
        c["idn"], "--principal", "studio", "--purpose", "portrait", "--attested-by", "Jane Doe (studio)",
        "--expires", "2099-01-01T00:00:00+00:00", "--max-uses", "5", "--deny", "gore",
        "--consent-text", str(c["tmp"] / "consent.txt"),
    ], check=json_is(lambda c: {"id": c["grant"], "identity_id": c["idn"], "purposes": ["portrait"]}),
         keep=lambda r, c: c.update(grant=r.json()["id"])),
    Step("generate", ("generate",), lambda c: [
        *GENERATE, "a portrait in a garden", "--subject", c["idn"], "--reference", lfw(c, "Tony_Blair", 6),
    ], check=check_generate, keep=keep_released),
    Step("generate_denied_term", ("generate",), lambda c: [*GENERATE, "a gore portrait", "--subject", c["idn"]],
         code=3, check=refused("consent.prompt_denied")),
    Step("verify", ("verify",), lambda c: [str(c["released"])], check=verify_text("Trusted")),
    Step("verify_json", ("verify",), lambda c: [str(c["released"]), "--json"], check=verify_json("Trusted")),
    Step("strip_metadata", None, run=strip_metadata),
    Step("verify_stripped", ("verify",), lambda c: [str(c["stripped"])], check=verify_text("none")),
    Step("verify_stripped_json", ("verify",), lambda c: [str(c["stripped"]), "--json"], check=verify_json(None)),
    Step("watermark_embed", ("watermark", "embed"), lambda c: [
        str(c["tmp"] / "photo.png"), str(c["tmp"] / "marked.png"), "--payload", "00112233aabbccdd",
    ], check=check_embed("00112233aabbccdd")),
    Step("watermark_embed_random", ("watermark", "embed"),
         lambda c: [str(c["tmp"] / "photo.png"), str(c["tmp"] / "marked-random.jpg")], check=check_embed(None)),
    Step("watermark_decode", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png")],
         check=check_decode_text("wm_key")),
    Step("watermark_decode_json", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png"), "--json"],
         check=check_decode_json),
    Step("audit_export_all", ("audit", "export"), check=check_export_all, keep=keep_export_all),
    Step("audit_verify", ("audit", "verify"), check=check_audit_text),
    Step("audit_verify_json", ("audit", "verify"), lambda c: ["--json"], check=check_audit_json),
    Step("audit_export_filtered", ("audit", "export"), lambda c: ["--identity", c["idn"], "--decision", "released"],
         check=check_export_filtered),
    Step("audit_export_csv", ("audit", "export"), lambda c: [
        "--format", "csv", "--principal", c["id_studio"],
        "--since", "2000-01-01T00:00:00+00:00", "--until", "2100-01-01T00:00:00+00:00",
    ], check=check_export_csv),
    Step("revoke", ("revoke",), lambda c: [c["grant"]],
         check=json_is(lambda c: {"id": c["grant"], "revoked": True})),
    Step("generate_after_revoke", ("generate",), lambda c: [
        *GENERATE, "a portrait", "--subject", c["idn"], "--reference", lfw(c, "Tony_Blair", 6),
    ], code=3, check=refused("consent.revoked")),
    Step("erase", ("erase",), lambda c: [c["idn"]], check=check_erase),
    Step("verify_after_erase", ("verify",), lambda c: [str(c["released"]), "--json"], check=check_erased_record),
    Step("keys_rotate_watermark", ("keys", "rotate-watermark"), check=check_rotation, keep=keep_rotation),
    # older keys are kept and still decode released images
    Step("verify_after_rotation", ("verify",), lambda c: [str(c["stripped"])],
         check=verify_text("none", key="wm_key_old")),
    Step("watermark_decode_after_rotation", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png")],
         check=check_decode_text("wm_key_old")),
    Step("enroll_library", ("enroll",), lambda c: [
        "--library", str(c["tmp"] / "library"), "--pick", "1", "--sheets", str(c["tmp"] / "sheets"),
    ], check=check_library),
    Step("calibrate_json", ("calibrate",), lambda c: [
        str(c["tmp"] / "calib"), "--json", "--report", str(c["tmp"] / "calib.html"),
        "--write-config", str(c["tmp"] / "calib.toml"),
    ], check=check_calibrate_json),
    Step("calibrate_text", ("calibrate",), lambda c: [str(c["tmp"] / "calib"), "--write-config"],
         env=lambda c: {"CONSENTRY_CONFIG": str(c["tmp"] / "own.toml")}, check=check_calibrate_text),
    demo("demo", lambda c: [], lambda c: c["data"] / "demo" / "outputs"),
    demo("demo_out", lambda c: ["--out", str(c["tmp"] / "demo-out")], lambda c: c["tmp"] / "demo-out"),
    Step("serve", ("serve",), lambda c: ["--host", HOST, "--port", str(c["port"]), "--workers", "1"],
         run=start_server, check=check_serve),
    Step("principal_revoke_key", ("principal", "revoke-key"), lambda c: [c["extra_key_id"]],
         check=check_key_revoked, keep=after_key_revoked),
    Step("stop_server", None, run=stop_server),
    Step("tamper_audit", None, run=tamper_audit),
    Step("audit_verify_broken", ("audit", "verify"), code=4, check=check_audit_broken),
]  # fmt: skip


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[tuple[dict[str, Result], Ctx]]:
    tmp = tmp_path_factory.mktemp("readme")
    port = free_port()
    c: Ctx = {"tmp": tmp, "data": tmp / "data", "faces": faces_dir, "port": port, "url": f"http://{HOST}:{port}"}
    results: dict[str, Result] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("CONSENTRY_")]:
            mp.delenv(name)
        mp.setenv("CONSENTRY_DATA_DIR", str(c["data"]))
        mp.setenv("CONSENTRY_DEVICE", "cpu")
        mp.setenv("CONSENTRY_CONFIG", str(tmp / "consentry.toml"))  # absent: defaults only
        mp.chdir(tmp)
        try:
            for step in STEPS:
                try:
                    argv = [*(step.command or ()), *step.args(c)]
                except KeyError as exc:
                    results[step.name] = Result([], error=f"not run: needs {exc} from an earlier step")
                    continue
                try:
                    results[step.name] = r = (step.run or run_main)(step, c, argv)
                except Exception:
                    results[step.name] = Result(argv, error=traceback.format_exc())
                    continue
                try:
                    if step.keep and r.code == step.code and r.error is None:
                        step.keep(r, c)
                except Exception:
                    r.error = f"reading its output failed:\n{traceback.format_exc()}"
            yield results, c
        finally:
            if "server" in c:
                os.killpg(c["server"].pid, signal.SIGKILL)
                c["server"].wait(timeout=10)
                c["server_log"].close()


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_step(readme_run: tuple[dict[str, Result], Ctx], step: Step) -> None:
    results, c = readme_run
    r = results[step.name]
    shown = f"consentry {' '.join(r.argv)}\n--- stdout\n{r.out[-3000:]}\n--- stderr\n{r.err[-3000:]}"
    assert r.error is None, f"{r.error}\n{shown}"
    assert r.code == step.code, f"exit {r.code}, README promises {step.code}\n{shown}"
    if step.check:
        try:
            step.check(r, c)
        except (AssertionError, KeyError, AttributeError, TypeError, ValueError) as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{shown}") from exc


def test_every_documented_command_is_run_and_every_run_is_documented() -> None:
    documented = set(readme_commands())
    run = {s.command for s in STEPS if s.command is not None}
    assert not documented - run, f"README commands this test does not run: {sorted(documented - run)}"
    assert not run - documented, f"commands run here that README no longer documents: {sorted(run - documented)}"


@pytest.mark.parametrize("command", sorted(readme_commands()), ids=" ".join)
def test_every_flag_shown_is_exercised(readme_run: tuple[dict[str, Result], Ctx], command: tuple[str, ...]) -> None:
    shown = set().union(*(flags(usage) for usage in readme_commands()[command]))
    results, _ = readme_run
    used = {arg for s in STEPS if s.command == command for arg in results[s.name].argv}
    assert shown <= used, f"README shows {sorted(shown - used)} for {' '.join(command)}; no step passes them"
