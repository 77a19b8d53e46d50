"""``consentry demo`` on a fresh data directory: no ../shared, builds what it needs, exits 0."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consentry.gateway.cli import main


def test_demo_runs_offline_and_releases_its_three_images(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    monkeypatch.delenv("CONSENTRY_FACES_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for code in (
        "released",
        "consent.missing",
        "face.none",
        "consent.prompt_denied",
        "consent.purpose_not_granted",
        "face.protected_identity",
        "consent.revoked",
    ):
        assert code in out
    # A txt2img release, an img2img one, and one made with the astronaut's adapter.
    assert "made by txt2img; 0 reference(s)" in out and "made by img2img; 1 reference(s)" in out
    assert re.search(r"made by txt2img, adapter adp_[0-9a-f]{16}; 0 reference", out)
    assert "C2PA Trusted" in out and "audit chain: intact" in out
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    assert (tmp_path / "data" / "models" / "tiny" / "model_index.json").is_file()


@pytest.mark.parametrize("bad", ["not-a-number"])
def test_bad_environment_is_a_clear_error(tmp_path: Path, monkeypatch, capsys, bad: str) -> None:
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONSENTRY_MATCH_THRESHOLD", bad)
    assert main(["audit", "verify"]) == 2
    assert "config.invalid" in capsys.readouterr().err
