"""The console in a real browser: Debian's Chromium driven by its chromedriver (Selenium, with
the driver's path given so Selenium Manager downloads nothing), against a real uvicorn server on
a free loopback port serving the app with the package's fakes.

One story, in order: sign in, find a refusal by its code, open it, revoke the grant and see the
next generation refused, drop a released image onto Verify and read its record, erase an
identity, and check that an auditor sees no revoke/erase buttons and gets 403 posting the form
anyway. A screenshot of each page goes to ``build/console-screenshots/``.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from consentry.gateway.gate import Gate
from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator
from consentry.gateway.wiring import open_gate
from consentry.policies import codes
from consentry.policies.config import Settings
from tests.conftest import REPO_ROOT
from tests.console.conftest import XSS_PROMPT, populate, world_photos

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO_ROOT / "build" / "console-screenshots"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    url: str
    keys: dict[str, str]
    ids: dict[str, str]

    def api(self, method: str, path: str, role: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + path, headers={"X-API-Key": self.keys[role]}, timeout=60, **kw
        )

    def generate(self, prompt: str = "a portrait") -> httpx.Response:
        body = {"prompt": prompt, "subject_id": self.ids["alice"], "purpose": "portrait"}
        return self.api("POST", "/v1/generate", "requester", json=body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, console_keys: Path) -> Iterator[Served]:
    """``consentry serve``'s app under uvicorn on loopback; its principals, identities and grant
    are made first, through a gate of its own on the same database (as ``consentry principal
    add`` would), so the server's event loop is never shared."""
    data = tmp_path_factory.mktemp("browser")
    analyzer = FingerprintAnalyzer()
    photos = world_photos(analyzer)
    settings = Settings(data_dir=data, keys_dir=console_keys, device="cpu", audit_prompts=True)

    async def factory(s: Settings) -> Gate:
        return await open_gate(s, analyzer=analyzer, generator=PhotoGenerator(photos["alice3"]))

    async def prepare() -> tuple[dict[str, str], dict[str, str]]:
        gate = await factory(settings)
        try:
            keys, _, ids = await populate(gate, photos)
            return keys, ids
        finally:
            await gate.close()

    keys, ids = asyncio.run(prepare())
    port = free_port()
    app = create_app(ConsentryConfig(settings=settings, gate_factory=factory))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", keys, ids)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="consentry-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, css: str, timeout: float = 20) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def sign_in(driver: Any, served: Served, role: str) -> None:
    driver.get(served.url + "/console/")
    wait_for(driver, "#api_key").send_keys(served.keys[role])
    driver.find_element("css selector", "#sign-in").click()
    wait_for(driver, "#signed-in-as")


def jpeg_copy(png: bytes) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=88)
    return buf.getvalue()


DROP_JS = """
const [b64, name, type] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name, {type: type}));
const zone = document.getElementById("dropzone");
for (const kind of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(kind, {dataTransfer: data, bubbles: true, cancelable: true}));
}
"""

POST_ANYWAY_JS = """
const [action, csrf, confirm] = arguments;
const form = document.createElement("form");
form.method = "post";
form.action = action;
for (const [k, v] of [["csrf", csrf], ["confirm", confirm]]) {
  const input = document.createElement("input");
  input.type = "hidden"; input.name = k; input.value = v;
  form.appendChild(input);
}
document.body.appendChild(form);
form.submit();
"""


def test_the_console_in_chromium(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    released = served.generate().json()
    assert released["record_id"]
    assert served.generate("a portrait in uniform").json()["code"] == codes.CONSENT_PROMPT_DENIED
    served.generate(XSS_PROMPT)
    for k in range(3):
        served.generate(f"portrait {k}")

    # Sign in (the login page first), and the overview.
    driver.get(served.url + "/console/decisions")
    wait_for(driver, "#api_key")
    shot(driver, "login")
    driver.find_element(By.CSS_SELECTOR, "#api_key").send_keys(served.keys["admin"])
    driver.find_element(By.CSS_SELECTOR, "#sign-in").click()
    wait_for(driver, "#decisions")  # back on the page asked for
    assert driver.execute_script("return document.cookie") == ""  # the session cookie is HttpOnly
    driver.get(served.url + "/console/")
    wait_for(driver, "#decisions-chart svg")
    assert driver.execute_script("return window.pwned") is None
    shot(driver, "overview")

    # Find a refusal by its code and open it.
    driver.get(served.url + "/console/decisions")
    wait_for(driver, "#f-code").send_keys(codes.CONSENT_PROMPT_DENIED)
    driver.find_element(By.CSS_SELECTOR, "#apply-filters").click()
    wait_for(driver, "#decisions a.open-event")
    rows = driver.find_elements(By.CSS_SELECTOR, "#decisions tbody tr")
    assert len(rows) == 1 and codes.CONSENT_PROMPT_DENIED in rows[0].text
    shot(driver, "decisions")
    rows[0].find_element(By.CSS_SELECTOR, "a.open-event").click()
    assert wait_for(driver, "#event-code").text == codes.CONSENT_PROMPT_DENIED
    assert len(driver.find_elements(By.CSS_SELECTOR, "#stages tbody tr")) >= 1
    shot(driver, "decision")

    # From the refusal to its identity; revoke the grant; the next generation is refused.
    driver.find_element(By.CSS_SELECTOR, "#event-identity").click()
    confirm = wait_for(driver, "form.revoke-form input[name=confirm]")
    button = driver.find_element(By.CSS_SELECTOR, "form.revoke-form button")
    assert not button.is_enabled()  # locked until the id is typed
    confirm.send_keys(served.ids["grant"])
    assert button.is_enabled()
    shot(driver, "identity")
    button.click()
    assert "revoked" in wait_for(driver, "#notice").text
    refused = served.generate()
    assert refused.status_code == 403 and refused.json()["code"] == codes.CONSENT_REVOKED
    driver.get(served.url + f"/console/decisions?code={codes.CONSENT_REVOKED}")
    wait_for(driver, "#decisions a.open-event")
    assert codes.CONSENT_REVOKED in driver.find_element(By.CSS_SELECTOR, "#decisions tbody tr").text

    # Drop the released image on Verify and read its record; then a stripped, re-encoded copy.
    png = base64.b64decode(released["images"][0])
    driver.get(served.url + "/console/verify")
    wait_for(driver, "#dropzone")
    driver.execute_script(DROP_JS, released["images"][0], "released.png", "image/png")
    assert wait_for(driver, "#verify-record-id").text == released["record_id"]
    assert driver.find_element(By.CSS_SELECTOR, "#wm-payload").text == released["watermark"]
    shot(driver, "verify")
    copy = SHOTS.parent / "console-copy.jpg"
    copy.write_bytes(jpeg_copy(png))
    wait_for(driver, "#image").send_keys(str(copy))  # the file input submits on change
    wait_for(driver, "#verify-result h2")
    assert driver.find_element(By.CSS_SELECTOR, "#verify-result h2").text == "console-copy.jpg"
    assert driver.find_element(By.CSS_SELECTOR, "#verify-record-id").text == released["record_id"]
    assert "no manifest" in driver.find_element(By.CSS_SELECTOR, "#c2pa-state").text

    # Erase an identity.
    driver.get(served.url + "/console/identities")
    wait_for(driver, "#identities")
    shot(driver, "identities")
    driver.get(served.url + f"/console/identities/{served.ids['bob']}")
    wait_for(driver, "#erase-confirm").send_keys(served.ids["bob"])
    driver.find_element(By.CSS_SELECTOR, "#erase").click()
    assert "erased" in wait_for(driver, "#notice").text
    assert driver.find_element(By.CSS_SELECTOR, "#identity-status").text == "erased"

    for page in ("calibration", "report"):
        driver.get(served.url + f"/console/{page}")
        wait_for(driver, "main h1")
        shot(driver, page)

    # An auditor: no revoke or erase buttons, and 403 when posting the form anyway.
    driver.find_element(By.CSS_SELECTOR, "#logout").click()
    wait_for(driver, "#api_key")
    sign_in(driver, served, "auditor")
    driver.get(served.url + f"/console/identities/{served.ids['alice']}")
    wait_for(driver, "#grants")
    assert driver.find_elements(By.CSS_SELECTOR, "form.revoke-form, #erase-form, button.danger") == []
    shot(driver, "identity-auditor")
    csrf = driver.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    driver.execute_script(
        POST_ANYWAY_JS, f"/console/identities/{served.ids['alice']}/erase", csrf, served.ids["alice"]
    )
    assert wait_for(driver, "#error-code").text == codes.AUTH_FORBIDDEN
    assert "403" in driver.find_element(By.CSS_SELECTOR, "main h1").text
    driver.get(served.url + f"/console/identities/{served.ids['alice']}")
    assert wait_for(driver, "#identity-status").text == "active"  # nothing was erased
