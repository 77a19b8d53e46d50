"""Sessions and forms: CSRF on every POST, no session fixation, logout, idle expiry, a revoked
key ending its session, cookie flags, and user-supplied text always escaped."""

from __future__ import annotations

import re

import httpx
import pytest
from markupsafe import escape
from sqlalchemy import func, select

from consentry.gateway.console.web import COOKIE
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.storage.tables import ConsoleSession
from consentry.policies import codes
from tests.console.conftest import XSS_LABEL, XSS_PROMPT, ConsoleWorld, csrf_of, new_browser, plant, sign_in

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def console_posts(world: ConsoleWorld) -> list[str]:
    """Every POST route of the console, from the app's own route table (so a new form is
    covered without editing this test), with ids of this world filled in."""
    fill = {"{grant_id:str}": world.ids["grant"], "{identity_id:str}": world.ids["alice"]}
    paths = []
    for route in world.client.app.routes:
        if route.path.startswith(world.base) and "POST" in getattr(route, "methods", ()):
            path = route.path
            for key, value in fill.items():
                path = path.replace(key, value)
            paths.append(path)
    return sorted(paths)


async def session_rows(world: ConsoleWorld) -> int:
    async with world.gate.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(ConsoleSession)) or 0)


async def test_every_post_needs_the_sessions_csrf_token(world: ConsoleWorld) -> None:
    posts = console_posts(world)
    assert {f"{world.base}/logout", f"{world.base}/verify", f"{world.base}/chain/verify"} <= set(posts)
    assert f"{world.base}/grants/{world.ids['grant']}/revoke" in posts and len(posts) == 6
    c = await sign_in(world, "admin")
    confirm = {"confirm": world.ids["grant"]}
    for path in posts:
        if path.endswith("/login"):
            continue
        for data in ({}, {"csrf": "0" * 64}):
            r = await c.post(path, data={**confirm, **data})
            assert r.status_code == 403 and codes.CONSOLE_CSRF_INVALID in r.text, (path, data)
    # A token from another session is as wrong as a made-up one.
    other = await sign_in(world, "auditor")
    stolen = csrf_of((await other.get(f"{world.base}/verify")).text)
    r = await c.post(f"{world.base}/grants/{world.ids['grant']}/revoke", data={**confirm, "csrf": stolen})
    assert r.status_code == 403
    assert (await world.generate()).status_code == 201  # nothing was revoked
    assert (await c.get(f"{world.base}/verify")).status_code == 200  # and the session is still there


async def test_sign_in_form_has_its_own_csrf(world: ConsoleWorld) -> None:
    c = new_browser(world)
    form = await c.get(f"{world.base}/login")
    token = csrf_of(form.text)
    c.cookies.clear()  # a cross-site post carries no login cookie of ours
    r = await c.post(f"{world.base}/login", data={"api_key": world.keys["admin"], "csrf": token})
    assert r.status_code == 403 and codes.CONSOLE_CSRF_INVALID in r.text
    c2 = new_browser(world)
    await c2.get(f"{world.base}/login")
    r = await c2.post(f"{world.base}/login", data={"api_key": world.keys["admin"], "csrf": "forged"})
    assert r.status_code == 403


async def test_a_planted_session_id_is_never_adopted(world: ConsoleWorld) -> None:
    planted = "attacker-chosen-session-id-0123456789abcdef"
    c = new_browser(world)
    plant(c, COOKIE, planted)
    form = await c.get(f"{world.base}/login")
    assert (
        planted in form.request.headers["cookie"] and form.status_code == 200
    )  # the planted id is no session
    r = await c.post(f"{world.base}/login", data={"api_key": world.keys["admin"], "csrf": csrf_of(form.text)})
    issued = re.search(rf"{COOKIE}=([^;]+)", r.headers["set-cookie"])
    assert issued and issued.group(1) != planted
    attacker = new_browser(world)
    plant(attacker, COOKIE, planted)
    assert (await attacker.get(f"{world.base}/decisions")).status_code == 303
    # Signing in again (here as someone else) rotates the id too, and ends the first session.
    first = issued.group(1)
    assert (await c.get(f"{world.base}/login")).status_code == 303  # signed in: sent home
    form = await new_browser(world).get(f"{world.base}/login")
    plant(c, "consentry_console_login", form.cookies["consentry_console_login"])
    again = await c.post(
        f"{world.base}/login", data={"api_key": world.keys["auditor"], "csrf": csrf_of(form.text)}
    )
    second = re.search(rf"{COOKIE}=([^;]+)", again.headers["set-cookie"])
    assert second and second.group(1) != first
    assert await session_rows(world) == 1
    replay = new_browser(world)
    plant(replay, COOKIE, first)
    assert (await replay.get(f"{world.base}/decisions")).status_code == 303


async def test_logout_ends_the_session_server_side(world: ConsoleWorld) -> None:
    c = await sign_in(world, "admin")
    token = c.cookies.get(COOKIE)
    assert token and await session_rows(world) == 1
    page = await c.get(f"{world.base}/decisions")
    r = await c.post(f"{world.base}/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"{world.base}/login"
    assert await session_rows(world) == 0
    replay = new_browser(world)
    plant(replay, COOKIE, token)
    assert (await replay.get(f"{world.base}/decisions")).status_code == 303


async def test_idle_sessions_expire_and_used_ones_do_not(world: ConsoleWorld) -> None:
    idle = world.gate.settings.console_idle_timeout_s
    c = await sign_in(world, "auditor")
    for _ in range(3):  # used every 0.9 x idle: alive for 2.7 x idle
        world.clock.advance(idle * 0.9)
        assert (await c.get(f"{world.base}/decisions")).status_code == 200
    world.clock.advance(idle + 1)
    r = await c.get(f"{world.base}/decisions")
    assert r.status_code == 303 and "/login" in r.headers["location"]
    assert await session_rows(world) == 0
    page = await (await sign_in(world, "admin")).get(f"{world.base}/verify")
    world.clock.advance(idle + 1)
    r = await c.post(f"{world.base}/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 401 and codes.CONSOLE_SESSION_REQUIRED in r.text  # a POST too


async def test_sessions_end_at_their_maximum_age(world: ConsoleWorld) -> None:
    s = world.gate.settings
    c = await sign_in(world, "auditor")
    step = s.console_idle_timeout_s * 0.5
    for _ in range(int(s.console_max_session_s // step)):
        world.clock.advance(step)
        await c.get(f"{world.base}/verify")
    world.clock.advance(step)
    assert (await c.get(f"{world.base}/verify")).status_code == 303


async def test_a_revoked_key_ends_its_session_on_the_next_request(world: ConsoleWorld) -> None:
    c = await sign_in(world, "auditor")
    assert (await c.get(f"{world.base}/decisions")).status_code == 200
    admin = await world.client.get("/v1/audit/verify", headers={"X-API-Key": world.keys["admin"]})
    assert admin.status_code == 200
    r = await world.client.post(
        f"/v1/keys/{world.key_ids['auditor']}/revoke", headers={"X-API-Key": world.keys["admin"]}
    )
    assert r.status_code == 201
    r = await c.get(f"{world.base}/decisions")
    assert r.status_code == 303 and "/login" in r.headers["location"]
    assert await session_rows(world) == 0


async def test_cookie_flags(world: ConsoleWorld) -> None:
    c = new_browser(world)
    form = await c.get(f"{world.base}/login")
    r = await c.post(f"{world.base}/login", data={"api_key": world.keys["admin"], "csrf": csrf_of(form.text)})
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags and "secure" not in flags
    page = await c.get(f"{world.base}/decisions")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # Over https (e.g. behind a TLS proxy with --proxy-headers) the cookie is Secure.
    transport = httpx.ASGITransport(app=world.client.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as tls:
        form = await tls.get(f"{world.base}/login")
        r = await tls.post(
            f"{world.base}/login", data={"api_key": world.keys["admin"], "csrf": csrf_of(form.text)}
        )
        cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}="))
        assert "secure" in cookie.lower()


@SQLITE
async def test_user_supplied_text_is_escaped_everywhere(world: ConsoleWorld) -> None:
    assert (await world.generate(XSS_PROMPT)).status_code == 201
    assert (await world.generate(XSS_PROMPT + " in uniform")).status_code == 403  # refused, audited
    c = await sign_in(world, "admin")
    seen = []
    decisions = await c.get(f"{world.base}/decisions")
    seqs = [int(s) for s in re.findall(r'/decisions/(\d+)" class="open-event"', decisions.text)]
    pages = [f"/decisions/{s}" for s in seqs] + [
        "/decisions",
        "/identities",
        f"/identities/{world.ids['alice']}",
    ]
    for path in pages:
        text = (await c.get(world.base + path)).text
        assert "<script>" not in text.replace(
            '<script src="/console/static/console.js" defer></script>', ""
        ), path
        seen.append(text)
    joined = "\n".join(seen)
    assert str(escape(XSS_LABEL)) in joined and "&lt;script&gt;window.pwned" in joined  # the label
    assert str(escape(XSS_PROMPT)) in joined and "&lt;script&gt;alert(" in joined  # the prompt


async def test_console_in_plugin_mode_lives_under_the_prefix(world: ConsoleWorld) -> None:
    app = create_app(ConsentryConfig(settings=world.gate.settings, path_prefix="/consentry"))
    paths = {r.path for r in app.routes}
    assert {"/consentry/console/login", "/consentry/console/decisions"} <= paths
    assert any(p.startswith("/consentry/console/static/") for p in paths)
    assert not any(p.startswith("/console") for p in paths)
    schema = app.openapi_schema.to_schema()
    assert not [p for p in schema["paths"] if "console" in p]  # HTML pages are not part of the API
