"""``consentry demo`` on a fresh data directory: no ../shared, builds what it needs, exits 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentry.gateway.cli import main


def test_demo_runs_offline_and_releases_one_image(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    monkeypatch.delenv("CONSENTRY_FACES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for code in ("released", "consent.missing", "face.none", "consent.prompt_denied", "consent.revoked"):
        assert code in out
    assert "C2PA Trusted" in out and "audit chain: intact, 10 events" in out
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert (tmp_path / "data" / "models" / "tiny" / "model_index.json").is_file()


@pytest.mark.parametrize("bad", ["not-a-number"])
def test_bad_environment_is_a_clear_error(tmp_path: Path, monkeypatch, capsys, bad: str) -> None:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONSENTRY_MATCH_THRESHOLD", bad)
    assert main(["audit", "verify"]) == 2
    assert "config.invalid" in capsys.readouterr().err
