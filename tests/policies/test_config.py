"""Settings come from consentry.toml and CONSENTRY_* variables; state lives under data_dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from consentry.policies.config import Settings


def test_defaults_put_all_state_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONSENTRY_CONFIG", raising=False)
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'consentry.db'}"
    for path in (s.model_dir, s.output_dir, s.keys_dir):
        assert path is not None and path.is_relative_to(tmp_path / "d")


def test_toml_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "consentry.toml"
    toml.write_text(
        'match_threshold = 0.95\nunknown_faces = "allow"\npolicy_file = "/etc/consentry/policy.toml"\n'
    )
    monkeypatch.setenv("CONSENTRY_CONFIG", str(toml))
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONSENTRY_UNKNOWN_FACES", "refuse")
    s = Settings()
    assert s.match_threshold == 0.95 and s.policy_file == Path("/etc/consentry/policy.toml")
    assert s.unknown_faces.value == "refuse"  # the environment wins over the file


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "consentry.toml"
    toml.write_text("match_treshold = 0.9\n")
    monkeypatch.setenv("CONSENTRY_CONFIG", str(toml))
    with pytest.raises(ValidationError):
        Settings()
    toml.write_text('unknown_faces = "sometimes"\n')
    with pytest.raises(ValidationError):
        Settings()
