"""Who may do what in the console: the API's roles, checked by the Gate's role table.

An auditor sees and exports but has no revoke or erase button and gets 403 when posting the form
anyway; an operator manages identities but reads no audit log (as on the API); a requester
cannot sign in.
"""

from __future__ import annotations

import pytest

from consentry.policies import codes
from tests.console.conftest import ConsoleWorld, csrf_of, new_browser, sign_in

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

PAGES = ["/", "/decisions", "/decisions/1", "/identities", "/verify", "/calibration", "/report", "/export"]


@SQLITE
async def test_admin_and_auditor_see_every_page(world: ConsoleWorld) -> None:
    await world.generate()
    for role in ("admin", "auditor"):
        c = await sign_in(world, role)
        for path in [*PAGES, f"/identities/{world.ids['alice']}"]:
            r = await c.get(world.base + path)
            assert r.status_code == 200, (role, path, r.text[:500])


@SQLITE
async def test_auditor_has_no_revoke_or_erase_and_posting_anyway_is_403(world: ConsoleWorld) -> None:
    c = await sign_in(world, "auditor")
    page = await c.get(f"{world.base}/identities/{world.ids['alice']}")
    assert "revoke-form" not in page.text and "erase-form" not in page.text
    assert world.ids["grant"] in page.text  # the grant itself is shown
    csrf = csrf_of(page.text)
    revoke = await c.post(
        f"{world.base}/grants/{world.ids['grant']}/revoke", data={"csrf": csrf, "confirm": world.ids["grant"]}
    )
    erase = await c.post(
        f"{world.base}/identities/{world.ids['alice']}/erase",
        data={"csrf": csrf, "confirm": world.ids["alice"]},
    )
    for r in (revoke, erase):
        assert r.status_code == 403 and codes.AUTH_FORBIDDEN in r.text
    assert (await world.generate()).status_code == 201  # the grant is still live, alice still enrolled


@SQLITE
async def test_operator_manages_identities_but_reads_no_audit_log(world: ConsoleWorld) -> None:
    c = await sign_in(world, "operator")
    home = await c.get(f"{world.base}/")
    assert home.status_code == 303 and home.headers["location"] == f"{world.base}/identities"
    for path in ("/decisions", "/decisions/1", "/export", "/report"):
        r = await c.get(world.base + path)
        assert r.status_code == 403 and codes.AUTH_FORBIDDEN in r.text, path
    page = await c.get(f"{world.base}/identities/{world.ids['alice']}")
    assert "revoke-form" in page.text and "erase-form" in page.text
    assert ">Decisions<" not in page.text  # no link to what the role cannot read


@pytest.mark.parametrize("role, status", [("requester", 403)])
@SQLITE
async def test_requester_cannot_sign_in(world: ConsoleWorld, role: str, status: int) -> None:
    c = new_browser(world)
    form = await c.get(f"{world.base}/login")
    r = await c.post(f"{world.base}/login", data={"api_key": world.keys[role], "csrf": csrf_of(form.text)})
    assert r.status_code == status and "may not use the console" in r.text
    assert "consentry_console=" not in r.headers.get("set-cookie", "").replace("consentry_console_login=", "")
    assert (await c.get(f"{world.base}/")).status_code == 303  # still signed out


@SQLITE
async def test_unknown_key_is_refused_and_pages_ask_to_sign_in(world: ConsoleWorld) -> None:
    c = new_browser(world)
    form = await c.get(f"{world.base}/login")
    r = await c.post(f"{world.base}/login", data={"api_key": "csk_nope", "csrf": csrf_of(form.text)})
    assert r.status_code == 401 and "unknown or revoked API key" in r.text
    for path in PAGES:
        r = await c.get(world.base + path)
        assert r.status_code == 303 and r.headers["location"].startswith(f"{world.base}/login?next="), path


@SQLITE
async def test_sign_in_returns_to_the_page_asked_for_and_never_elsewhere(world: ConsoleWorld) -> None:
    c = new_browser(world)
    first = await c.get(f"{world.base}/identities")
    form = await c.get(first.headers["location"])
    assert 'name="next" value="/console/identities"' in form.text
    ok = await c.post(
        f"{world.base}/login",
        data={"api_key": world.keys["admin"], "csrf": csrf_of(form.text), "next": "/console/identities"},
    )
    assert ok.headers["location"] == "/console/identities"
    c2 = new_browser(world)
    form = await c2.get(f"{world.base}/login")
    evil = await c2.post(
        f"{world.base}/login",
        data={"api_key": world.keys["admin"], "csrf": csrf_of(form.text), "next": "//evil.example/x"},
    )
    assert evil.headers["location"] == "/console/"
