"""README.md, as written: its tables and its set-up block against the code.

This module parses the README (the parsers are shared with ``test_readme_commands.py``, which
runs every documented command in order) and checks what needs no models: the "## HTTP" table
against the app's OpenAPI document, the set-up block's command 2 against ``.ci/run``, and the
``consentry`` console script.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

from consentry.gateway.plugin import ConsentryConfig, create_app
from consentry.policies.config import Settings
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def section(title: str, text: str | None = None) -> str:
    """The body of the ``## title`` section of the README (up to the next ``## ``)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    match = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def first_cells(body: str) -> list[str]:
    """The first cell of each row of the (first) markdown table in ``body``, header excluded;
    ``\\|`` inside a cell is an escaped pipe, not a cell boundary."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    assert len(rows) > 2, f"no table in {body[:200]!r}"
    cells = []
    for row in rows[2:]:  # header and |---| separator
        cell = re.match(r"\|((?:\\\||[^|])*)\|", row)
        assert cell, row
        cells.append(cell.group(1).replace("\\|", "|").strip())
    return cells


def fixed_words(usage: str) -> tuple[str, ...]:
    """``consentry watermark embed IN OUT [--payload HEX]`` -> ``("watermark", "embed")``."""
    words = []
    for token in usage.split()[1:] if usage.startswith("consentry ") else usage.split():
        if not re.fullmatch(r"[a-z][a-z-]*", token):
            break
        words.append(token)
    return tuple(words)


def readme_commands(text: str | None = None) -> dict[tuple[str, ...], list[str]]:
    """Each documented command (its fixed words) -> the usages the README shows for it.

    A row may hold two usages separated by `` / ``; one that does not start with
    ``consentry`` continues the first one's command group (``/ `decode IN [--json]` `` after
    ``consentry watermark embed …`` is ``watermark decode``).
    """
    out: dict[tuple[str, ...], list[str]] = {}
    for cell in first_cells(section("Commands", text)):
        usages = re.findall(r"`([^`]+)`", cell)
        assert usages and usages[0].startswith("consentry "), f"row without a command: {cell!r}"
        group = fixed_words(usages[0])[:-1]
        for usage in usages:
            words = fixed_words(usage) if usage.startswith("consentry ") else group + fixed_words(usage)
            assert words, f"cannot read the command words of {usage!r}"
            out.setdefault(words, []).append(usage)
    return out


def flags(usage: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage))


def normalise(path: str) -> str:
    """``/v1/principals/{id}/keys`` and ``/v1/principals/{principal_id}/keys`` compare equal."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def readme_routes(text: str | None = None) -> set[tuple[str, str]]:
    """``(METHOD, normalised path)`` of every route in the "## HTTP" table."""
    routes = set()
    for cell in first_cells(section("HTTP", text)):
        found = re.findall(rf"`({'|'.join(HTTP_METHODS)}) (/[^`\s]*)`", cell)
        assert found, f"HTTP table row without a route: {cell!r}"
        routes |= {(method, normalise(path)) for method, path in found}
    return routes


def openapi_routes(document: dict) -> set[tuple[str, str]]:
    """``(METHOD, normalised path)`` of every operation in an OpenAPI document."""
    return {
        (method.upper(), normalise(path))
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }


def test_parsers_read_the_tables_they_are_meant_to_read() -> None:
    sample = (
        "## Commands\n\n| command | what |\n|---|---|\n"
        "| `consentry a b X [--c D]` / `e F [--g]` | x |\n| `consentry h [--i jsonl\\|csv]` | y |\n"
        "## HTTP\n\n| route | role |\n|---|---|\n| `GET /x`, `POST /x/{id}/y` (z) | a |\n"
    )
    assert readme_commands(sample) == {
        ("a", "b"): ["consentry a b X [--c D]"],
        ("a", "e"): ["e F [--g]"],
        ("h",): ["consentry h [--i jsonl|csv]"],
    }
    assert flags("consentry h [--i jsonl|csv] --max-uses N") == {"--i", "--max-uses"}
    assert readme_routes(sample) == {("GET", "/x"), ("POST", "/x/{}/y")}


def app_openapi(tmp_path: Path) -> dict:
    """The OpenAPI document of the app ``consentry serve`` runs, built in-process (no lifespan:
    nothing loads, nothing is written)."""
    app = create_app(ConsentryConfig(settings=Settings(data_dir=tmp_path, device="cpu")))
    return app.openapi_schema.to_schema()


def test_every_readme_route_is_served(tmp_path: Path) -> None:
    documented = readme_routes()
    assert ("GET", "/health") in documented and len(documented) >= 10
    missing = documented - openapi_routes(app_openapi(tmp_path))
    assert not missing, f"README's HTTP table lists routes the app does not serve: {sorted(missing)}"


def test_every_app_route_is_in_the_readme(tmp_path: Path) -> None:
    served = {r for r in openapi_routes(app_openapi(tmp_path)) if not r[1].startswith("/schema")}
    undocumented = served - readme_routes()
    assert not undocumented, f"routes missing from README's HTTP table: {sorted(undocumented)}"


def setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", section("Set-up: two commands"), re.S)
    assert block, "no ```bash block in the set-up section"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_setup_command_2_is_what_ci_runs() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = [i for i, line in enumerate(lines) if "The README's command (2), verbatim:" in line]
    assert len(marker) == 1, ".ci/run lost its 'The README's command (2), verbatim:' line"
    assert lines[marker[0] + 1] == commands[1]


def test_setup_command_1_ends_in_the_demo() -> None:
    assert setup_commands()[0].endswith(".venv/bin/consentry demo")


def test_consentry_is_the_cli_main() -> None:
    [script] = entry_points(group="console_scripts", name="consentry")
    assert script.value == "consentry.gateway.cli:main"
