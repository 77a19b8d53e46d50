"""``consentry policy check [FILE] [--prompt TEXT] [--purpose P] [--json]`` in-process: a valid
file is summarised, a broken one is refused with exit 2 and its line, and a prompt is run through
the policy's rules (the real embedding model for the shipped policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consentry.gateway.cli import main
from consentry.policies import codes
from tests.gateway.test_cli_imports import probe

OWN = """version = "site-3"
[prompt]
deny_terms = ["gore"]
[purposes.marketing]
deny_terms = ["endorses"]
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    monkeypatch.delenv("CONSENTRY_CONFIG", raising=False)
    monkeypatch.delenv("CONSENTRY_POLICY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.toml").write_text(OWN)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_file_is_summarised(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "own.toml")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "own.toml: valid, version site-3"
    code, out, _ = run(capsys, "own.toml", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["valid"] is True and shown["version"] == "site-3"
    assert (shown["deny_terms"], shown["semantic"], shown["purposes"]) == (1, False, ["marketing"])


def test_without_a_file_the_configured_policy_is_checked(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "--json")
    assert code == 0 and json.loads(out)["file"] == "default policy"
    monkeypatch.setenv("CONSENTRY_POLICY_FILE", str(env / "own.toml"))
    code, out, _ = run(capsys, "--json")
    assert code == 0 and json.loads(out)["version"] == "site-3"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('version = "x"\n[prompt\n', "(at line 2, column 8)"),
        ('version = "x"\n\n[prompt]\nsemantic_threshold = 3\n', "line 4: prompt.semantic_threshold"),
        (None, "does not exist"),
    ],
)
def test_a_bad_or_missing_file_exits_2_with_its_line(
    env: Path, capsys: pytest.CaptureFixture[str], text: str | None, needle: str
) -> None:
    if text is not None:
        (env / "bad.toml").write_text(text)
    code, out, err = run(capsys, "bad.toml")
    assert code == 2 and out == ""
    assert err.startswith(f"error [{codes.POLICY_INVALID}]: ") and needle in err and "bad.toml" in err


@pytest.mark.parametrize("prompt", ["", "   ", "x" * 2001, "bell\x07"])
def test_a_bad_prompt_exits_2(env: Path, capsys: pytest.CaptureFixture[str], prompt: str) -> None:
    code, out, err = run(capsys, "own.toml", "--prompt", prompt)
    assert code == 2 and out == "" and err.startswith(f"error [{codes.POLICY_PROMPT_INVALID}]: ")


def test_deny_terms_of_the_deployment_and_of_a_purpose(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "own.toml", "--prompt", "she endorses a drink", "--json")
    assert code == 0 and json.loads(out)["refused"] is False  # no purpose: only the deployment's terms
    code, out, _ = run(
        capsys, "own.toml", "--prompt", "she endorses a drink", "--purpose", "marketing", "--json"
    )
    shown = json.loads(out)
    assert shown["refused"] is True and shown["code"] == codes.CONSENT_PROMPT_DENIED
    assert (shown["rule"], shown["terms"], shown["category"]) == ("deny_terms", ["endorses"], None)
    code, out, _ = run(capsys, "own.toml", "--prompt", "gore at night")
    assert code == 0 and out == "refused [consent.prompt_denied]: the prompt uses denied terms: gore\n"


def test_the_shipped_policy_refuses_by_meaning_and_names_the_category(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--prompt", "photograph her with all of her clothes stripped off", "--json")
    shown = json.loads(out)
    assert code == 0 and err == ""  # no progress bars from the model libraries
    assert {"refused", "code", "category", "score"} <= set(shown)
    assert (shown["refused"], shown["code"], shown["category"]) == (
        True,
        codes.CONSENT_PROMPT_DENIED,
        "sexual",
    )
    assert shown["score"] >= shown["threshold"]
    code, out, _ = run(capsys, "--prompt", "a street musician playing saxophone at dusk", "--json")
    shown = json.loads(out)
    assert code == 0 and (shown["refused"], shown["code"], shown["category"]) == (False, codes.OK, None)
    assert shown["score"] < shown["threshold"]
    code, out, _ = run(capsys, "--prompt", "a street musician playing saxophone at dusk")
    assert out.startswith("allowed: the prompt is in no denied category (closest: ")


def test_checking_a_file_imports_no_model_library(env: Path) -> None:
    assert probe(env, "policy", "check", "own.toml") == (0, [])
    assert probe(env, "policy", "check") == (0, [])  # the shipped policy: the model is found, not loaded
    assert probe(env, "policy", "check", "own.toml", "--prompt", "") == (2, [])
