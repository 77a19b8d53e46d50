"""The installed distribution exposes its packages under one namespace, ``consentry.*``, so it
cannot collide with another project's top-level ``gateway`` or ``policies`` package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGES = ("gateway", "detectors", "provenance", "generation", "policies")


def run_elsewhere(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    # Run from a folder outside the checkout, so only what is installed can be imported.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_packages_are_installed_under_consentry(tmp_path: Path) -> None:
    code = f"""
        import importlib, importlib.util
        for name in {PACKAGES!r}:
            assert importlib.import_module("consentry." + name)
            assert importlib.util.find_spec(name) is None, name + " leaked as a top-level package"
        import consentry.gateway.cli
        print("ok")
    """
    result = run_elsewhere(tmp_path, code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_another_projects_gateway_and_policies_packages_still_import(tmp_path: Path) -> None:
    for name in ("gateway", "policies"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'the other project\\'s {name}'\n")
    code = """
        import gateway, policies
        import consentry.gateway.gate, consentry.policies.config
        assert gateway.WHO.endswith("gateway") and policies.WHO.endswith("policies")
        assert consentry.gateway.gate.__name__ == "consentry.gateway.gate"
        print("ok")
    """
    result = run_elsewhere(tmp_path, code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_source_imports_only_the_namespace() -> None:
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for folder in (*PACKAGES, "tests", "bench"):
        for path in (root / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                stripped = line.strip()
                if path.name == "test_packaging.py":
                    continue  # its test programs import another project's packages on purpose
                if any(stripped.startswith((f"from {p}.", f"from {p} ", f"import {p}")) for p in PACKAGES):
                    offenders.append(f"{path.relative_to(root)}:{n}: {stripped}")
    assert not offenders, "\n".join(offenders)
