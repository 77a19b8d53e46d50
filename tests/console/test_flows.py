"""What the console's pages show and do, on SQLite and PostgreSQL: revoke and erase through the
Gate (the next generation is refused), filtered keyset pages, exports that verify against the
chain, the compliance report, a decision's page, and Verify on a released and a re-encoded copy.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re

from PIL import Image

from consentry.gateway.console.service import ConsoleService
from consentry.policies import codes
from consentry.provenance.audit import event_hash
from tests.console.conftest import ConsoleWorld, csrf_of, sign_in


def seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'/decisions/(\d+)" class="open-event"', html)]


async def test_revoke_then_the_next_generation_is_refused(world: ConsoleWorld) -> None:
    assert (await world.generate()).status_code == 201
    c = await sign_in(world, "operator")
    page = await c.get(f"{world.base}/identities/{world.ids['alice']}")
    assert 'class="grant live"' in page.text
    url = f"{world.base}/grants/{world.ids['grant']}/revoke"
    wrong = await c.post(url, data={"csrf": csrf_of(page.text), "confirm": "yes"})
    assert wrong.status_code == 400 and codes.CONSOLE_CONFIRMATION_MISMATCH in wrong.text
    assert (await world.generate()).status_code == 201  # a mistyped confirmation changed nothing
    done = await c.post(url, data={"csrf": csrf_of(page.text), "confirm": world.ids["grant"]})
    assert done.status_code == 303
    shown = await c.get(done.headers["location"])
    assert "revoked; adapters deleted with it: 0" in shown.text and 'class="grant dead"' in shown.text
    refused = await world.generate()
    assert refused.status_code == 403 and refused.json()["code"] == codes.CONSENT_REVOKED
    events = [e async for e in world.gate.audit.events()]
    revoked = [e for e in events if e.kind == "grant.revoked"]
    assert revoked[0].body["actor"] == world.key_ids["operator_principal"]  # the signed-in principal
    again = await c.post(url, data={"csrf": csrf_of(page.text), "confirm": world.ids["grant"]})
    assert again.status_code == 404 and codes.GRANT_NOT_FOUND in again.text


async def test_erase_an_identity(world: ConsoleWorld) -> None:
    c = await sign_in(world, "admin")
    url = f"{world.base}/identities/{world.ids['alice']}"
    page = await c.get(url)
    wrong = await c.post(f"{url}/erase", data={"csrf": csrf_of(page.text), "confirm": world.ids["bob"]})
    assert wrong.status_code == 400
    done = await c.post(f"{url}/erase", data={"csrf": csrf_of(page.text), "confirm": world.ids["alice"]})
    assert done.status_code == 303
    shown = await c.get(done.headers["location"])
    assert 'id="identity-status">erased' in shown.text and "grants revoked: 1" in shown.text
    assert "templates destroyed: 3" in shown.text and "erase-form" not in shown.text
    assert (await world.generate()).json()["code"] == codes.CONSENT_SUBJECT_INACTIVE


async def test_filters_and_keyset_pages(world: ConsoleWorld) -> None:
    for k in range(7):
        await world.generate(f"portrait {k}" + (" in uniform" if k % 2 else ""))
    c = await sign_in(world, "admin")
    service: ConsoleService = world.client.app.state["consentry_console"]
    service.page_size = 3
    everything = [e.seq async for e in world.gate.audit.events()]
    walked, url = [], f"{world.base}/decisions"
    while url:
        page = await c.get(url)
        walked += seqs(page.text)
        older = re.search(r'href="([^"]+)" id="older"', page.text)
        url = older.group(1).replace("&amp;", "&") if older else ""
    assert walked == sorted(everything, reverse=True)  # every event once, newest first, no OFFSET
    second = await c.get(f"{world.base}/decisions?before={walked[2]}")
    newer = re.search(r'href="([^"]+)" id="newer"', second.text)
    assert newer and seqs((await c.get(newer.group(1).replace("&amp;", "&"))).text) == walked[:3]

    refused = await c.get(f"{world.base}/decisions?code={codes.CONSENT_PROMPT_DENIED}")
    assert len(seqs(refused.text)) == 3 and 'id="older"' not in refused.text  # exactly one page
    by_name = await c.get(f"{world.base}/decisions?principal=requester-1&decision=released")
    assert len(seqs(by_name.text)) == 3 and 'id="older"' in by_name.text  # 4 released: two pages
    service.page_size = 50
    by_name = await c.get(f"{world.base}/decisions?principal=requester-1&decision=released")
    by_id = await c.get(
        f"{world.base}/decisions?principal={world.key_ids['requester_principal']}&decision=refused"
    )
    assert len(seqs(by_name.text)) == 4 and len(seqs(by_id.text)) == 3
    identity = await c.get(f"{world.base}/decisions?identity={world.ids['alice']}")
    assert len(seqs(identity.text)) == 7 + 2  # the generations, plus enrollment and grant
    future = await c.get(f"{world.base}/decisions?since=2999-01-01")
    past = await c.get(f"{world.base}/decisions?until=2000-01-01")
    assert seqs(future.text) == [] == seqs(past.text)
    bad = await c.get(f"{world.base}/decisions?since=yesterday")
    assert bad.status_code == 400 and codes.CONSOLE_FILTER_INVALID in bad.text


async def test_exports_follow_the_filter_and_verify_against_the_chain(world: ConsoleWorld) -> None:
    for k in range(4):
        await world.generate("portrait in uniform" if k % 2 else "portrait")
    c = await sign_in(world, "auditor")
    r = await c.get(f"{world.base}/export?format=jsonl&decision=refused")
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in r.headers["content-disposition"]
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 2 and {e["body"]["decision"] for e in lines} == {codes.CONSENT_PROMPT_DENIED}
    chain = {e.seq: e for e in [e async for e in world.gate.audit.events()]}
    for e in lines:
        stored = chain[e["seq"]]
        assert e["hash"] == event_hash(
            seq=e["seq"], ts=e["ts"], kind=e["kind"], body=e["body"], prev=stored.prev_hash
        )
    rows = list(
        csv.DictReader(io.StringIO((await c.get(f"{world.base}/export?format=csv&decision=released")).text))
    )
    assert len(rows) == 2 and {row["decision"] for row in rows} == {"released"}
    empty = await c.get(f"{world.base}/export?format=jsonl&since=2999-01-01")
    assert empty.status_code == 200 and empty.text == ""


async def test_decision_page_shows_stages_record_and_grant(world: ConsoleWorld) -> None:
    released = (await world.generate()).json()
    c = await sign_in(world, "admin")
    page = (await c.get(f"{world.base}/decisions/{released['audit_seq']}")).text
    for stage in (
        "consent",
        "verify_refs",
        "generate",
        "verify_output",
        "watermark",
        "sign",
    ):  # release = this event
        assert f"<td>{stage}</td>" in page
    assert f'id="record-id">{released["record_id"]}<' in page
    assert f'/identities/{world.ids["alice"]}#{world.ids["grant"]}" id="record-grant"' in page
    missing = await c.get(f"{world.base}/decisions/999999")
    assert missing.status_code == 404 and codes.CONSOLE_EVENT_NOT_FOUND in missing.text


async def test_compliance_report(world: ConsoleWorld) -> None:
    await world.generate()
    await world.generate("portrait in uniform")
    c = await sign_in(world, "admin")
    page = await c.get(f"{world.base}/identities/{world.ids['alice']}")
    await c.post(
        f"{world.base}/grants/{world.ids['grant']}/revoke",
        data={"csrf": csrf_of(page.text), "confirm": world.ids["grant"]},
    )
    await c.post(
        f"{world.base}/identities/{world.ids['bob']}/erase",
        data={"csrf": csrf_of(page.text), "confirm": world.ids["bob"]},
    )
    report = (await c.get(f"{world.base}/report?recompute=1")).text
    assert re.search(r'id="r-total">2<', report) and re.search(r'id="r-refused">1<', report)
    assert "grant.revoked" in report and "identity.erased" in report
    assert "templates destroyed: 3" in report and "adapters deleted: 0" in report
    assert 'id="r-recomputed">' in report and '<span class="ok">intact</span>' in report
    assert "signature valid, names the last event" in report
    bad = await c.get(f"{world.base}/report?since=2025-02-01&until=2025-01-01")
    assert bad.status_code == 400


async def test_verify_a_released_image_and_a_reencoded_copy(world: ConsoleWorld) -> None:
    released = (await world.generate()).json()
    png = base64.b64decode(released["images"][0])
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=90)  # strips C2PA, re-encodes
    c = await sign_in(world, "auditor")
    form = await c.get(f"{world.base}/verify")
    for name, data, c2pa in (("out.png", png, "Trusted"), ("copy.jpg", buf.getvalue(), None)):
        r = await c.post(
            f"{world.base}/verify",
            data={"csrf": csrf_of(form.text)},
            files={"image": (name, data, "application/octet-stream")},
        )
        assert r.status_code == 200, r.text[:400]
        assert f'id="verify-record-id">{released["record_id"]}<' in r.text, name
        assert f'id="wm-payload">{released["watermark"]}<' in r.text
        state = re.search(r'id="c2pa-state">(.*?)</dd>', r.text)
        assert state and ((c2pa or "no manifest") in state.group(1)), r.text[:500]
    none = await c.post(f"{world.base}/verify", data={"csrf": csrf_of(form.text)})
    assert none.status_code == 400 and codes.CONSOLE_UPLOAD_MISSING in none.text
    junk = await c.post(
        f"{world.base}/verify", data={"csrf": csrf_of(form.text)}, files={"image": ("x.png", b"not an image")}
    )
    assert junk.status_code == 400 and codes.IMAGE_INVALID in junk.text


async def test_calibration_page_shows_the_latest_report_sandboxed(world: ConsoleWorld) -> None:
    c = await sign_in(world, "auditor")
    assert "none yet" in (await c.get(f"{world.base}/calibration")).text
    assert (await c.get(f"{world.base}/calibration/report")).status_code == 404
    report = world.gate.settings.data_dir / "calibration-report.html"
    report.write_text("<html><body><h1>Face matching calibration</h1><svg></svg></body></html>")
    page = await c.get(f"{world.base}/calibration")
    assert 'id="calibration-report"' in page.text and "sandbox" in page.text
    served = await c.get(f"{world.base}/calibration/report")
    assert served.status_code == 200 and "Face matching calibration" in served.text
    assert served.headers["content-security-policy"].startswith("sandbox")


async def test_overview(world: ConsoleWorld) -> None:
    await world.generate()
    await world.generate("portrait in uniform")
    c = await sign_in(world, "auditor")
    page = (await c.get(f"{world.base}/")).text
    assert "<svg" in page and f"?code={codes.CONSENT_PROMPT_DENIED}" in page
    assert re.search(r"<td>generate</td><td class=\"num\">1</td>", page)
    assert '<span class="ok">valid</span>' in page and "not run by this process yet" in page
    r = await c.post(f"{world.base}/chain/verify", data={"csrf": csrf_of(page)})
    assert r.status_code == 303
    assert '<span class="ok">intact</span>' in (await c.get(f"{world.base}/")).text
    assert (await c.get(f"{world.base}/?days=1")).status_code == 200
    assert (await c.get(f"{world.base}/?days=0")).status_code == 400
