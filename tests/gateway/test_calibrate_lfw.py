"""``consentry calibrate`` on the real LFW photos through the production face path, once per module.

The LFW run is the real thing (MTCNN, our alignment, the torch dlib-ResNet embedder, default
settings but ``device=cpu``): its accuracy is a measurement, not a fixture, and must stay at or
above 99% of all pairs at the best threshold.
"""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from consentry.gateway.cli import main
from consentry.gateway.cli.calibrate_cmd import write_match_threshold
from consentry.policies.config import Settings
from consentry.policies.errors import ConfigurationError

ORIGINAL_CONFIG = 'device = "cpu"\nstage_timeout_s = 77.0\npolicy_file = "/etc/consentry/policy.toml"\n'


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    report: Path
    config: Path


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def lfw_run(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("calibrate")
    config = tmp / "consentry.toml"
    config.write_text(ORIGINAL_CONFIG)
    report = tmp / "out" / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONSENTRY_CONFIG", str(config))
        mp.setenv("CONSENTRY_DATA_DIR", str(tmp / "data"))
        argv = ["calibrate", str(faces_dir / "lfw"), "--json", "--report", str(report), "--write-config"]
        code, out, err = _main(argv)
    return Run(code, out, err, report, config)


@pytest.fixture(scope="module")
def result(lfw_run: Run) -> dict:
    assert lfw_run.code == 0, lfw_run.err
    return json.loads(lfw_run.out)


@pytest.mark.slow
def test_lfw_pair_accuracy_at_the_best_threshold(result: dict) -> None:
    print(
        f"\nLFW: accuracy {result['accuracy']:.4f} at {result['best']['threshold']:.4f}; "
        f"TAR@FAR1e-3 {result['tar_at_far']['1e-3']:.4f}; chosen {result['threshold']} "
        f"({result['chosen']['rule']}); balanced {result['best_balanced']['balanced_accuracy']:.4f}"
    )
    assert result["accuracy"] >= 0.99
    assert result["accuracy"] == result["best"]["accuracy"]


@pytest.mark.slow
def test_json_has_the_documented_keys(result: dict) -> None:
    for key in ("pairs", "accuracy", "threshold", "tar_at_far", "undetected"):
        assert key in result
    assert set(result["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert all(0.0 <= v <= 1.0 for v in result["tar_at_far"].values())
    # Every photo is accounted for, and the pairs are all pairs of the photos used.
    assert result["photos"] + len(result["undetected"]) + len(result["unreadable"]) == 100
    n, pairs = result["photos"], result["pairs"]
    assert pairs["genuine"] + pairs["impostor"] == n * (n - 1) // 2
    assert result["people"] == 10
    # 4500 impostor pairs resolve FAR 1e-3 but not 1e-4.
    assert result["far_resolved"] == {"1e-2": True, "1e-3": True, "1e-4": False}


@pytest.mark.slow
def test_chosen_threshold_is_never_looser_than_the_best(result: dict) -> None:
    assert result["threshold"] >= result["best"]["threshold"]
    assert result["threshold"] == round(result["threshold"], 4)
    assert result["chosen"]["far"] <= result["best"]["far"]


@pytest.mark.slow
def test_report_is_self_contained_html_with_charts(lfw_run: Run, result: dict) -> None:
    html = lfw_run.report.read_text()
    assert result["report"] == str(lfw_run.report)
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2
    assert "<polyline" in html
    assert "src=" not in html and "href=" not in html and "<script" not in html


@pytest.mark.slow
def test_write_config_sets_the_threshold_and_keeps_other_keys(lfw_run: Run, result: dict) -> None:
    written = tomllib.loads(lfw_run.config.read_text())
    assert written == tomllib.loads(ORIGINAL_CONFIG) | {"match_threshold": result["threshold"]}
    assert result["config_written"] == str(lfw_run.config)


def test_settings_read_the_written_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(ORIGINAL_CONFIG)
    write_match_threshold(config, 0.9137)
    monkeypatch.setenv("CONSENTRY_CONFIG", str(config))
    monkeypatch.delenv("CONSENTRY_MATCH_THRESHOLD", raising=False)
    s = Settings()
    assert (s.match_threshold, s.stage_timeout_s, s.policy_file) == (
        0.9137,
        77.0,
        Path("/etc/consentry/policy.toml"),
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]  # no temporary file left behind


def test_write_config_refuses_a_broken_toml_and_leaves_it_alone(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("match_threshold = [unclosed\n")
    with pytest.raises(ConfigurationError) as info:
        write_match_threshold(config, 0.9)
    assert info.value.code == "config.invalid"
    assert config.read_text() == "match_threshold = [unclosed\n"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONSENTRY_CONFIG", str(tmp_path / "consentry.toml"))
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    return tmp_path


def _bad(argv: list[str], code: str, env: Path) -> None:
    exit_code, out, err = _main(argv)
    assert exit_code == 2 and f"[{code}]" in err and out == ""
    # Nothing written: no report under the data dir, no config file.
    assert not (env / "data" / "calibration-report.html").exists()
    assert not (env / "consentry.toml").exists()


def test_missing_dir_exits_2(cli_env: Path) -> None:
    _bad(["calibrate", str(cli_env / "nope"), "--write-config"], "calibrate.dir_missing", cli_env)


def test_one_person_exits_2(cli_env: Path, faces_dir: Path) -> None:
    only = cli_env / "one" / "Colin_Powell"
    only.mkdir(parents=True)
    for photo in sorted((faces_dir / "lfw" / "Colin_Powell").iterdir())[:3]:
        (only / photo.name).symlink_to(photo)
    _bad(["calibrate", str(cli_env / "one"), "--write-config"], "calibrate.too_few_people", cli_env)


def test_no_detectable_face_exits_2(cli_env: Path, faces_dir: Path) -> None:
    root = cli_env / "nofaces"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "landscape.jpg").symlink_to(faces_dir / "groups" / "017_0.jpg")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(root / "b" / "grey.png")
    (root / "b" / "notes.txt").write_text("not an image")
    _bad(["calibrate", str(root), "--write-config"], "calibrate.no_faces", cli_env)
