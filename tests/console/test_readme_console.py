"""README.md's "## Console" route table against the console the app serves: every route listed
is served, every console route served is listed (the HTTP table's tests cover the API)."""

from __future__ import annotations

import re
from pathlib import Path

from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.policies.config import Settings
from tests.conftest import REPO_ROOT
from tests.gateway.test_readme import HTTP_METHODS, first_cells, normalise, section


def documented() -> set[tuple[str, str]]:
    routes = set()
    for cell in first_cells(section("Console")):
        found = re.findall(rf"`({'|'.join(HTTP_METHODS)}) (/console[^`\s]*)`", cell)
        assert found, f"Console table row without a route: {cell!r}"
        routes |= {(method, normalise(path)) for method, path in found}
    return routes


def served(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(ConsentryConfig(settings=Settings(data_dir=tmp_path, device="cpu")))
    out = set()
    for route in app.routes:
        if route.path.startswith("/console"):
            path = "/console/" if route.path == "/console" else route.path
            for method in getattr(route, "methods", ()):
                if method in HTTP_METHODS:
                    out.add((method, normalise(path)))
    return out


def test_the_console_table_lists_exactly_the_console_routes(tmp_path: Path) -> None:
    listed, serving = documented(), served(tmp_path)
    assert len(listed) >= 15
    assert not listed - serving, (
        f"README lists console routes the app does not serve: {sorted(listed - serving)}"
    )
    assert not serving - listed, f"console routes missing from README: {sorted(serving - listed)}"


def test_the_readme_shows_three_screenshots_that_exist() -> None:
    shots = re.findall(r"!\[[^\]]*\]\((docs/console/[^)]+\.png)\)", section("Console"))
    assert len(shots) == 3 and all((REPO_ROOT / s).is_file() for s in shots), shots
