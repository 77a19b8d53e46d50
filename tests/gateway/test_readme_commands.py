"""Every command of README.md's "## Commands" table, run as written, in order, in one fresh data
directory (``CONSENTRY_DATA_DIR``, CPU), on real photos; ``serve`` as a real subprocess.

``STEPS`` is the script (the machinery is in ``readme_steps.py``). The module fixture runs it
once, in-process through ``consentry.gateway.cli.main`` (as ``tests/gateway/test_cli.py`` does);
then one test per step checks the exit code the README promises and what the README says the
command prints or does. Which commands and flags the README documents is read from README.md: a
documented command no step runs fails, a step whose command the README no longer documents
fails, and so does a flag shown in the README that no step passes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.readme_steps import (
    HOST,
    PAYLOAD,
    Check,
    Ctx,
    Result,
    Step,
    after_key_revoked,
    found,
    free_port,
    lfw,
    one_json,
    prepare_inputs,
    run_script,
    server_reaped,
    start_server,
    stop_server,
    strip_metadata,
    tamper_audit,
)
from tests.gateway.test_readme import flags, openapi_routes, readme_commands, readme_routes

pytestmark = pytest.mark.slow

# -- what each command is checked for -------------------------------------------------------------


def json_is(expected: Callable[[Ctx], dict[str, Any]]) -> Check:
    def check(r: Result, c: Ctx) -> None:
        assert one_json(r) == expected(c)

    return check


def keep_keys(r: Result, c: Ctx) -> None:
    c["wm_key"] = found(r"watermark key (wmk_\w+) created", r.out).group(1)
    c["ca_pem"] = (c["data"] / "keys" / "ca.cert.pem").read_bytes()


def check_keys_init(r: Result, c: Ctx) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    assert f"in {c['data'] / 'keys' / 'watermark'}" in r.out and "Back it up" in r.out
    assert f"development CA and ES256 signing certificate written to {c['data'] / 'keys'}" in r.out
    [signer, *_] = x509.load_pem_x509_certificates((c["data"] / "keys" / "signing.chain.pem").read_bytes())
    key = signer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"  # ES256


def check_keys_force(r: Result, c: Ctx) -> None:  # replaces the signing keys, never the watermark keys
    assert f"watermark keys kept: 1 key(s), current {c['wm_key']}" in r.out
    assert "signing certificate written" in r.out and c["ca_pem_forced"] != c["ca_pem"]


def check_tiny(where: Callable[[Ctx], Path]) -> Check:
    def check(r: Result, c: Ctx) -> None:
        assert f"tiny UNTRAINED diffusers pipeline saved to {where(c)}" in r.out
        assert (where(c) / "model_index.json").is_file()

    return check


def principal(name: str, role: str) -> Step:
    def keep(r: Result, c: Ctx) -> None:
        c[f"id_{name}"], c[f"key_{name}"] = r.json()["id"], r.json()["api_key"]

    def check(r: Result, c: Ctx) -> None:  # prints its API key once (the server takes it: check_serve)
        shown = one_json(r)
        assert shown["id"].startswith("prn_") and shown["role"] == role
        assert re.fullmatch(r"csk_[\w-]{40,}", shown["api_key"]) and "cannot be shown again" in r.err

    return Step(
        f"principal_add_{name}", ("principal", "add"), lambda c: [name, "--role", role], 0, check, keep
    )


def keep_released(r: Result, c: Ctx) -> None:
    m = found(r"^released (gen_\w+) watermark=([0-9a-f]{16}) audit_seq=\d+", r.out)
    c["record"], c["payload"], c["released"] = m.group(1), m.group(2), Path(r.lines()[-1].strip())


def check_generate(r: Result, c: Ctx) -> None:
    assert "UNTRAINED model" in r.lines()[0] and len(r.lines()) == 2
    assert c["released"].is_file() and c["released"].parent == c["data"] / "outputs"
    assert c["released"].name.startswith(c["record"])


def check_error(r: Result, code: str) -> None:
    assert r.err.startswith(f"error [{code}]: ") and r.out == ""


def refused(code: str) -> Check:
    def check(r: Result, c: Ctx) -> None:
        assert r.err.startswith(f"refused [{code}]") and r.out == ""

    return check


def verify_text(c2pa: str) -> Check:
    def check(r: Result, c: Ctx) -> None:  # C2PA state, watermark and the generation record
        assert re.fullmatch(rf"C2PA manifest: {c2pa}( \(.*\))?", r.lines()[0]), r.lines()[0]
        mark = rf"watermark: payload {c['payload']} \(confidence [\d.]+, key {c['wm_key']}\)"
        assert re.fullmatch(mark, r.lines()[1]), r.lines()[1]
        assert r.lines()[2].startswith(f"generation record: {c['record']} at audit seq")

    return check


def verify_json(c2pa: str | None) -> Check:
    def check(r: Result, c: Ctx) -> None:
        report = r.json()
        assert report["c2pa"]["state"] == c2pa
        assert report["watermark"]["found"] is True and report["watermark"]["payload"] == c["payload"]
        assert report["record"]["id"] == c["record"]

    return check


def check_embed(payload: str | None) -> Check:
    def check(r: Result, c: Ctx) -> None:
        shown = one_json(r)
        assert re.fullmatch(r"[0-9a-f]{16}", shown["payload"]) and payload in (None, shown["payload"])
        assert shown["key_id"] == c["wm_key"] and Path(shown["output"]).is_file()

    return check


def check_decode_text(r: Result, c: Ctx) -> None:  # decode prints which key matched
    assert re.fullmatch(
        rf"watermark found: payload {PAYLOAD} \(confidence [\d.]+, key {c['wm_key']}\)\n", r.out
    )


def check_decode_json(r: Result, c: Ctx) -> None:
    reading = one_json(r)
    assert reading["found"] is True and reading["payload"] == PAYLOAD
    assert reading["key_id"] == c["wm_key"] and reading["confidence"] > 0.5


def check_export_all(r: Result, c: Ctx) -> None:
    events = [json.loads(line) for line in r.lines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["kind"] for e in events]
    assert kinds[:6] == ["principal.created"] * 4 + ["identity.enrolled", "grant.created"]
    assert "generation.released" in kinds and not [e for e in events if "prompt" in e["body"]]


def check_audit_text(r: Result, c: Ctx) -> None:
    assert re.fullmatch(rf"audit chain intact; {c['events']} events; head [0-9a-f]{{16}}…\n", r.out)


def check_audit_json(r: Result, c: Ctx) -> None:
    report = one_json(r)
    assert report["ok"] is True and report["events"] == c["events"] and report["first_bad_seq"] is None


def check_export_filtered(r: Result, c: Ctx) -> None:
    [event] = [json.loads(line) for line in r.lines()]
    assert event["kind"] == "generation.released" and event["body"]["request_id"] == c["record"]


def check_export_csv(r: Result, c: Ctx) -> None:
    assert r.lines()[0] == "seq,ts,kind,decision,principal_id,identity_id,request_id,hash,body"
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert {row["principal_id"] for row in rows} == {c["id_studio"]}
    assert {"released", "consent.prompt_denied"} <= {row["decision"] for row in rows}


def check_grant_again(r: Result, c: Ctx) -> None:
    shown = one_json(r)
    assert shown["id"].startswith("gnt_") and shown["id"] != c["grant"] and shown["identity_id"] == c["idn"]


def check_erase(r: Result, c: Ctx) -> None:  # template key destroyed, grants revoked, records flagged
    shown = one_json(r)
    assert (shown["id"], shown["erased"]) == (c["idn"], True)
    assert (shown["templates_destroyed"], shown["grants_revoked"], shown["records_flagged"]) == (4, 1, 1)


def check_erased_record(r: Result, c: Ctx) -> None:
    record = r.json()["record"]
    assert record["id"] == c["record"] and record["subject_erased"] is True


def keep_rotation(r: Result, c: Ctx) -> None:
    c["wm_key_new"] = found(r"current watermark key: (wmk_\w+)", r.out).group(1)


def check_rotation(r: Result, c: Ctx) -> None:  # a new current key; older keys are kept
    assert c["wm_key_new"] != c["wm_key"]
    assert sorted(found(r"^2 key\(s\) decode: (.*)$", r.lines()[1]).group(1).split(", ")) == sorted(
        [c["wm_key"], c["wm_key_new"]]
    )
    assert "Restart running gateways" in r.out


def check_library(r: Result, c: Ctx) -> None:
    shown = one_json(r)  # the one JSON line; the listing goes to stderr
    assert shown["id"].startswith("idn_") and (shown["group"], shown["photos"]) == (1, 4)
    assert "8 faces in 8 images, 2 groups; sheets in" in r.err
    assert sorted(p.name for p in (c["tmp"] / "sheets").iterdir()) == ["group_001.png", "group_002.png"]


def check_calibrate_json(r: Result, c: Ctx) -> None:
    result = r.json()
    assert (result["people"], result["photos"], result["pairs"]) == (2, 6, {"genuine": 6, "impostor": 9})
    assert result["report"] == str(c["tmp"] / "calib.html") and 0 < result["threshold"] < 1
    assert (c["tmp"] / "calib.html").read_text().startswith("<!DOCTYPE html>")
    assert result["config_written"] == str(c["tmp"] / "calib.toml")
    assert tomllib.loads((c["tmp"] / "calib.toml").read_text()) == {"match_threshold": result["threshold"]}


def check_calibrate_text(r: Result, c: Ctx) -> None:
    # The report defaults to DATA_DIR; --write-config without FILE writes the file Settings reads.
    report, config = c["data"] / "calibration-report.html", c["tmp"] / "own.toml"
    assert "6 photos of 2 people" in r.out and f"report: {report}" in r.out and report.is_file()
    m = found(rf"match_threshold = ([\d.]+) written to {re.escape(str(config))}", r.out)
    assert tomllib.loads(config.read_text()) == {"match_threshold": float(m.group(1))}


SITE_POLICY = """version = "site-1"
[prompt]
deny_terms = ["gore"]
[purposes.marketing]
deny_terms = ["endorses"]
"""


def write_policies(c: Ctx, argv: list[str]) -> Result:
    """A deployment's own policy file, and a broken one (line 4: a threshold above 1)."""
    (c["tmp"] / "site-policy.toml").write_text(SITE_POLICY)
    (c["tmp"] / "broken-policy.toml").write_text('version = "x"\n\n[prompt]\nsemantic_threshold = 3\n')
    return Result(argv, code=0)


def check_policy_default(r: Result, c: Ctx) -> None:
    from consentry.policies.policy import load_policy

    assert r.lines()[0] == f"default policy: valid, version {load_policy(None).version}"
    assert "semantic rule on: 4 categories (sexual, graphic_violence, humiliation, minors)" in r.out


def check_policy_file_json(r: Result, c: Ctx) -> None:
    shown = one_json(r)
    assert (shown["valid"], shown["version"], shown["semantic"]) == (True, "site-1", False)
    assert shown["purposes"] == ["marketing"] and shown["file"] == str(c["tmp"] / "site-policy.toml")


def check_policy_broken(r: Result, c: Ctx) -> None:  # the line of the bad key
    check_error(r, "policy.invalid")
    assert "broken-policy.toml: line 4: prompt.semantic_threshold:" in r.err


def policy_verdict(refused: bool, category: str | None) -> Check:
    def check(r: Result, c: Ctx) -> None:
        shown = one_json(r)
        assert (shown["refused"], shown["category"]) == (refused, category)
        assert shown["code"] == ("consent.prompt_denied" if refused else "ok")
        assert isinstance(shown["score"], float) and (shown["score"] >= shown["threshold"]) == refused

    return check


def check_policy_purpose(r: Result, c: Ctx) -> None:
    assert r.out == "refused [consent.prompt_denied]: the prompt uses denied terms: endorses\n"


def demo(name: str, args: Callable[[Ctx], list[str]], outputs: Callable[[Ctx], Path]) -> Step:
    """Each run recreates DATA_DIR/demo, so the released images are listed right after it."""

    def keep(r: Result, c: Ctx) -> None:
        c[f"{name}_pngs"] = sorted(outputs(c).glob("*.png"))

    def check(r: Result, c: Ctx) -> None:  # a table of decisions with refusal codes and timings
        for code in ("released", "consent.missing", "face.none", "consent.prompt_denied", "consent.revoked"):
            assert code in r.out
        assert "UNTRAINED" in r.out and "(stage timings in milliseconds" in r.out
        assert "C2PA Trusted" in r.out and "audit chain: intact" in r.out
        pngs = c[f"{name}_pngs"]  # the released images, in DATA_DIR/demo/outputs or --out
        assert len(pngs) == 3 and all(f"  {png}" in r.lines() for png in pngs)

    return Step(name, ("demo",), args, check=check, keep=keep)


def check_adapter_trained(source: str, photos: int) -> Check:
    def check(r: Result, c: Ctx) -> None:  # a progress bar on stderr, the adapter as JSON
        shown = one_json(r)
        assert shown["id"].startswith("adp_") and shown["status"] == "ready"
        assert (shown["identity_id"], shown["photos_source"], shown["photos"]) == (c["idn2"], source, photos)
        assert shown["steps_done"] == shown["steps"] and f"{shown['steps']}/{shown['steps']}" in r.err
        assert c[f"stored_{shown['id']}"]  # its encrypted file existed right after training

    return check


def keep_adapter(name: str) -> Check:
    def keep(r: Result, c: Ctx) -> None:
        adapter = r.json()["id"]
        c[name], c[f"stored_{adapter}"] = adapter, bool(list((c["data"] / "adapters").glob(f"{adapter}*")))

    return keep


def check_adapters_list(r: Result, c: Ctx) -> None:
    rows = r.lines()
    assert len(rows) == 2 and all(c["idn2"] in row and " ready " in row for row in rows)
    assert {c["adapter1"], c["adapter2"]} == {row.split()[0] for row in rows}


def check_adapters_json(r: Result, c: Ctx) -> None:
    shown = r.json()
    assert {a["id"] for a in shown} == {c["adapter1"], c["adapter2"]}
    assert all(a["rank"] in (2, 4) and a["grant_id"] == c["grant2"] for a in shown)


def check_generate_adapter(r: Result, c: Ctx) -> None:
    assert f"mode=txt2img adapter={c['adapter2']}" in r.lines()[0]  # the newest ready adapter


def check_generate_img2img(r: Result, c: Ctx) -> None:
    assert "mode=img2img" in r.lines()[0] and "adapter=" not in r.lines()[0]


def check_adapter_deleted(r: Result, c: Ctx) -> None:
    assert one_json(r) == {"id": c["adapter1"], "deleted": True}
    assert not list((c["data"] / "adapters").glob(f"{c['adapter1']}*"))


def check_serve(r: Result, c: Ctx) -> None:
    http = c["http"]
    assert http["health"]["status"] == "ok" and http["health"]["untrained_model"] is True
    assert http["docs"] == 200  # OpenAPI docs at /schema
    missing = readme_routes() - openapi_routes(http["openapi"])
    assert not missing, f"README routes the running gateway does not serve: {sorted(missing)}"
    # All routes but /health*, /metrics, /schema and public verification need a key; audit is
    # admin, auditor; principals admin.
    assert http["audit_no_key"] == 401
    keyless = {route: code for route, code in http["no_key"].items() if code != 401}
    public = ("/verify", "/v1/services/", "/v1/matches/", "/v1/manifests/", "/v1/public/")
    open_by_design = ("/health", "/metrics", *public)
    assert {route for route in keyless if not route[1].startswith(open_by_design)} == set(), keyless
    assert {route for route in http["no_key"] if route[1].startswith(public)} <= set(keyless)
    assert http["audit"] == {"admin": 200, "studio": 403, "ops": 403, "auditor": 200}
    assert http["principals"] == {"ops": 403, "admin": 201}
    # Adapter training over HTTP: 202 at once, progress in GET /v1/adapters/{id} until ready.
    trained = http["adapter"]
    assert trained["started"]["status"] == "training" and trained["final"]["status"] == "ready"
    assert trained["final"]["steps_done"] == 2 and trained["listed"] and trained["others_see"] == 404
    assert trained["delete"] == {"studio": 403, "ops": 200}
    # SIGTERM: a graceful shutdown (uvicorn re-raises the signal after it: -SIGTERM, not 0).
    log = (c["tmp"] / "serve.log").read_text()
    assert c["serve_exit"] in (0, -signal.SIGTERM) and "Application shutdown complete." in log, log[-3000:]


def check_audit_broken(r: Result, c: Ctx) -> None:
    assert r.out.startswith("audit chain BROKEN at seq 2: ")


def check_key_revoked(r: Result, c: Ctx) -> None:  # it fails from the next request on
    assert one_json(r) == {"id": c["extra_key_id"], "revoked": True}
    assert (c["http"]["extra_before"], c["http"]["extra_after"]) == (200, 401)


def check_challenge(r: Result, c: Ctx) -> None:  # one-time: poses, a nonce, at most two minutes
    from datetime import UTC, datetime, timedelta

    shown = one_json(r)
    assert shown["challenge_id"].startswith("chl_") and len(shown["nonce"]) >= 40
    assert sorted(shown["poses"]) == ["front", "left", "right"]
    assert datetime.fromisoformat(shown["expires_at"]) - datetime.now(UTC) <= timedelta(seconds=120)


def self_enrollment(c: Ctx) -> list[str]:
    """Hugo Chavez's photos, and for each pose asked his LFW photo that shows it (measured yaw:
    0003 +39.6 = his left, 0010 -4.0 = front, 0006 -24.4 = his right)."""
    shown = {"left": 3, "front": 10, "right": 6}
    frames = [
        arg for pose in c["challenge"]["poses"] for arg in ("--frame", lfw(c, "Hugo_Chavez", shown[pose]))
    ]
    photos = [lfw(c, "Hugo_Chavez", n) for n in (1, 2, 4, 5)]
    return ["--label", "Hugo", *photos, "--challenge", c["challenge"]["challenge_id"],
            "--nonce", c["challenge"]["nonce"], *frames]  # fmt: skip


def check_self_enrolled(r: Result, c: Ctx) -> None:
    shown = one_json(r)
    assert shown["id"].startswith("idn_") and (shown["label"], shown["photos"]) == ("Hugo", 4)
    assert shown["attestation"] == "self_attested_with_liveness"


# -- the script, in order -------------------------------------------------------------------------

GENERATE = ["--as", "studio", "--purpose", "portrait", "--prompt"]
GRANT = ["--principal", "studio", "--purpose", "portrait", "--attested-by", "Jane Doe (studio)"]
REF = ("Tony_Blair", 6)

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
    Step("enroll_photos", ("enroll",),
         lambda c: ["--label", "Tony", *(lfw(c, "Tony_Blair", n) for n in (2, 3, 4, 5))],
         check=json_is(lambda c: {"id": c["idn"], "label": "Tony", "photos": 4}),
         keep=lambda r, c: c.update(idn=r.json()["id"])),
    # ≥ 3 photos: two are refused with exit 2 and a clear message.
    Step("enroll_two_photos", ("enroll",),
         lambda c: ["--label", "Two", *(lfw(c, "Vladimir_Putin", n) for n in (1, 2))],
         code=2, check=lambda r, c: check_error(r, "enroll.too_few_photos")),
    Step("grant", ("grant",), lambda c: [
        c["idn"], *GRANT, "--expires", "2099-01-01T00:00:00+00:00", "--max-uses", "5", "--deny", "gore",
        "--consent-text", str(c["tmp"] / "consent.txt"),
    ], check=json_is(lambda c: {"id": c["grant"], "identity_id": c["idn"], "purposes": ["portrait"]}),
         keep=lambda r, c: c.update(grant=r.json()["id"])),
    Step("generate", ("generate",),
         lambda c: [*GENERATE, "a portrait in a garden", "--subject", c["idn"], "--reference", lfw(c, *REF)],
         check=check_generate, keep=keep_released),
    Step("generate_denied_term", ("generate",),
         lambda c: [*GENERATE, "a gore portrait", "--subject", c["idn"]],
         code=3, check=refused("consent.prompt_denied")),
    # Self-enrollment: a challenge, answered once; the same answer again is a replay.
    Step("enrollments_challenge", ("enrollments", "challenge"), check=check_challenge,
         keep=lambda r, c: c.update(challenge=r.json())),
    Step("enroll_self", ("enroll",), self_enrollment, check=check_self_enrolled),
    Step("enroll_self_replayed", ("enroll",), self_enrollment, code=3, check=refused("liveness.replayed")),
    # Personalization: Jacques keeps his enrollment photos and grants studio adapter training.
    Step("enroll_keep_photos", ("enroll",),
         lambda c: ["--label", "Jacques", "--keep-photos", *(lfw(c, "Jacques_Chirac", n) for n in (1, 2, 3))],
         keep=lambda r, c: c.update(idn2=r.json()["id"])),
    Step("grant_training", ("grant",), lambda c: [
        c["idn2"], *GRANT, "--purpose", "adapter_training", "--use-enrollment-photos",
    ], keep=lambda r, c: c.update(grant2=r.json()["id"])),
    Step("adapters_train", ("adapters", "train"),
         lambda c: [c["idn2"], "--as", "studio", "--steps", "3", "--rank", "2", "--prior-images", "1"],
         check=check_adapter_trained("enrollment", 3), keep=keep_adapter("adapter1")),
    Step("adapters_train_photos", ("adapters", "train"), lambda c: [
        c["idn2"], "--as", "studio", "--steps", "2", "--prior-images", "0",
        "--photo", lfw(c, "Jacques_Chirac", 4), "--photo", lfw(c, "Jacques_Chirac", 5),
    ], check=check_adapter_trained("request", 2), keep=keep_adapter("adapter2")),
    Step("adapters_train_someone_else", ("adapters", "train"),
         lambda c: [c["idn2"], "--as", "studio", "--photo", lfw(c, "Tony_Blair", 6)],
         code=3, check=refused("face.protected_identity")),
    Step("adapters_train_without_grant", ("adapters", "train"),
         lambda c: [c["idn"], "--as", "studio", "--photo", lfw(c, "Tony_Blair", 6)],
         code=3, check=refused("consent.purpose_not_granted")),
    Step("adapters_train_bad_steps", ("adapters", "train"),
         lambda c: [c["idn2"], "--as", "studio", "--steps", "0"],
         code=2, check=lambda r, c: check_error(r, "adapter.invalid_params")),
    Step("adapters_list", ("adapters", "list"), lambda c: [c["idn2"]], check=check_adapters_list),
    Step("adapters_list_json", ("adapters", "list"), lambda c: ["--json"], check=check_adapters_json),
    Step("generate_adapter", ("generate",),
         lambda c: [*GENERATE, "a portrait", "--subject", c["idn2"], "--adapter"],
         check=check_generate_adapter),
    Step("generate_img2img", ("generate",), lambda c: [
        *GENERATE, "a portrait", "--subject", c["idn2"], "--mode", "img2img", "--strength", "0.5",
        "--reference", lfw(c, "Jacques_Chirac", 7),
    ], check=check_generate_img2img),
    Step("generate_bad_strength", ("generate",), lambda c: [
        *GENERATE, "a portrait", "--subject", c["idn2"], "--mode", "img2img", "--strength", "1.5",
        "--reference", lfw(c, "Jacques_Chirac", 7),
    ], code=2, check=lambda r, c: check_error(r, "generation.strength_invalid")),
    Step("adapters_delete", ("adapters", "delete"), lambda c: [c["adapter1"]], check=check_adapter_deleted),
    Step("verify", ("verify",), lambda c: [str(c["released"])], check=verify_text("Trusted")),
    Step("verify_json", ("verify",), lambda c: [str(c["released"]), "--json"], check=verify_json("Trusted")),
    Step("strip_metadata", None, run=strip_metadata),
    Step("verify_stripped", ("verify",), lambda c: [str(c["stripped"])], check=verify_text("none")),
    Step("verify_stripped_json", ("verify",), lambda c: [str(c["stripped"]), "--json"],
         check=verify_json(None)),
    Step("watermark_embed", ("watermark", "embed"),
         lambda c: [str(c["tmp"] / "photo.png"), str(c["tmp"] / "marked.png"), "--payload", PAYLOAD],
         check=check_embed(PAYLOAD)),
    Step("watermark_embed_random", ("watermark", "embed"),
         lambda c: [str(c["tmp"] / "photo.png"), str(c["tmp"] / "marked-random.jpg")],
         check=check_embed(None)),
    Step("watermark_decode", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png")],
         check=check_decode_text),
    Step("watermark_decode_json", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png"), "--json"],
         check=check_decode_json),
    Step("audit_export_all", ("audit", "export"), check=check_export_all,
         keep=lambda r, c: c.update(events=len(r.lines()))),
    Step("audit_verify", ("audit", "verify"), check=check_audit_text),
    Step("audit_verify_json", ("audit", "verify"), lambda c: ["--json"], check=check_audit_json),
    Step("audit_export_filtered", ("audit", "export"),
         lambda c: ["--identity", c["idn"], "--decision", "released"], check=check_export_filtered),
    Step("audit_export_csv", ("audit", "export"), lambda c: [
        "--format", "csv", "--principal", c["id_studio"],
        "--since", "2000-01-01T00:00:00+00:00", "--until", "2100-01-01T00:00:00+00:00",
    ], check=check_export_csv),
    Step("revoke", ("revoke",), lambda c: [c["grant"]],
         check=json_is(lambda c: {"id": c["grant"], "revoked": True})),
    Step("generate_after_revoke", ("generate",),
         lambda c: [*GENERATE, "a portrait", "--subject", c["idn"], "--reference", lfw(c, *REF)],
         code=3, check=refused("consent.revoked")),
    Step("grant_again", ("grant",), lambda c: [c["idn"], *GRANT], check=check_grant_again),
    Step("erase", ("erase",), lambda c: [c["idn"]], check=check_erase),
    Step("verify_after_erase", ("verify",), lambda c: [str(c["released"]), "--json"],
         check=check_erased_record),
    Step("keys_rotate_watermark", ("keys", "rotate-watermark"), check=check_rotation, keep=keep_rotation),
    # Older keys still decode released images (and marks made by the tools): the first key matches.
    Step("verify_after_rotation", ("verify",), lambda c: [str(c["stripped"])],
         check=verify_text("none")),
    Step("watermark_decode_after_rotation", ("watermark", "decode"), lambda c: [str(c["tmp"] / "marked.png")],
         check=check_decode_text),
    Step("enroll_library", ("enroll",), lambda c: [
        "--library", str(c["tmp"] / "library"), "--pick", "1", "--sheets", str(c["tmp"] / "sheets"),
    ], check=check_library),
    Step("calibrate_json", ("calibrate",), lambda c: [
        str(c["tmp"] / "calib"), "--json", "--report", str(c["tmp"] / "calib.html"),
        "--write-config", str(c["tmp"] / "calib.toml"),
    ], check=check_calibrate_json),
    Step("calibrate_text", ("calibrate",), lambda c: [str(c["tmp"] / "calib"), "--write-config"],
         env=lambda c: {"CONSENTRY_CONFIG": str(c["tmp"] / "own.toml")}, check=check_calibrate_text),
    Step("policy_check", ("policy", "check"), check=check_policy_default),
    Step("write_policies", None, run=write_policies),
    Step("policy_check_file_json", ("policy", "check"),
         lambda c: [str(c["tmp"] / "site-policy.toml"), "--json"], check=check_policy_file_json),
    Step("policy_check_broken", ("policy", "check"), lambda c: [str(c["tmp"] / "broken-policy.toml")],
         code=2, check=check_policy_broken),
    Step("policy_check_prompt_json", ("policy", "check"),
         lambda c: ["--prompt", "photograph her with all of her clothes stripped off", "--json"],
         check=policy_verdict(True, "sexual")),
    Step("policy_check_prompt_allowed", ("policy", "check"),
         lambda c: ["--prompt", "a portrait of her reading in a sunny garden", "--json"],
         check=policy_verdict(False, None)),
    Step("policy_check_purpose", ("policy", "check"), lambda c: [
        str(c["tmp"] / "site-policy.toml"), "--prompt", "she endorses our brand", "--purpose", "marketing",
    ], check=check_policy_purpose),
    demo("demo", lambda c: [], lambda c: c["data"] / "demo" / "outputs"),
    demo("demo_out", lambda c: ["--out", str(c["tmp"] / "demo-out")], lambda c: c["tmp"] / "demo-out"),
    Step("serve", ("serve",), lambda c: ["--host", HOST, "--port", str(c["port"]), "--workers", "1"],
         run=start_server, check=check_serve),
    # KEY: the id of a key issued by POST /v1/principals/{id}/keys (the CLI prints no key ids).
    Step("principal_revoke_key", ("principal", "revoke-key"), lambda c: [c["extra_key_id"]],
         check=check_key_revoked, keep=after_key_revoked),
    Step("stop_server", None, run=stop_server),
    Step("tamper_audit", None, run=tamper_audit),
    Step("audit_verify_broken", ("audit", "verify"), code=4, check=check_audit_broken),
]  # fmt: skip


@pytest.fixture(scope="module")
def readme_run(
    tmp_path_factory: pytest.TempPathFactory, faces_dir: Path
) -> Iterator[tuple[dict[str, Result], Ctx]]:
    tmp, port = tmp_path_factory.mktemp("readme"), free_port()
    c: Ctx = {
        "tmp": tmp,
        "data": tmp / "data",
        "faces": faces_dir,
        "port": port,
        "url": f"http://{HOST}:{port}",
    }
    with pytest.MonkeyPatch.context() as mp, server_reaped(c):
        for name in [k for k in os.environ if k.startswith("CONSENTRY_")]:
            mp.delenv(name)  # the defaults: SQLite, keys and model under the data dir
        mp.setenv("CONSENTRY_DATA_DIR", str(c["data"]))
        mp.setenv("CONSENTRY_DEVICE", "cpu")
        mp.setenv("CONSENTRY_CONFIG", str(tmp / "consentry.toml"))  # absent: no stray config is read
        mp.chdir(tmp)
        yield run_script(STEPS, c), c


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
        except (AssertionError, LookupError, AttributeError, TypeError, ValueError) as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{shown}") from exc


def test_every_documented_command_is_run_and_every_run_is_documented() -> None:
    documented, run = set(readme_commands()), {s.command for s in STEPS if s.command is not None}
    assert not documented - run, f"README commands this test does not run: {sorted(documented - run)}"
    assert not run - documented, (
        f"commands run here that README does not document: {sorted(run - documented)}"
    )


@pytest.mark.parametrize("command", sorted(readme_commands()), ids=" ".join)
def test_every_flag_shown_is_passed(
    readme_run: tuple[dict[str, Result], Ctx], command: tuple[str, ...]
) -> None:
    results, _ = readme_run
    shown = set().union(*(flags(usage) for usage in readme_commands()[command]))
    passed = {arg for s in STEPS if s.command == command for arg in results[s.name].argv}
    assert shown <= passed, (
        f"README shows {sorted(shown - passed)} for {' '.join(command)}; no step passes it"
    )
