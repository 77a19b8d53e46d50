"""``consentry calibrate DIR``: measure face matching on labelled photos, optionally configure it.

The measurement and the report are the detectors' (:mod:`consentry.detectors.calibration_run`,
:mod:`consentry.detectors.calibration_report`); this adapter loads the settings, builds the
analyzer, prints, and writes the chosen threshold into the configuration file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from consentry.gateway.cli.common import load_settings, quiet_model_libraries
from consentry.policies import codes
from consentry.policies.errors import ConfigurationError, ConsentryError


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure face matching on DIR/<person>/<photo> and optionally configure the threshold.

    The report goes to ``--report`` or ``DATA_DIR/calibration-report.html`` (state and
    artefacts live under the data directory, not wherever the command happens to run).
    ``--write-config`` without a file writes the file Settings reads (``config_file()``).
    Nothing is written unless the whole measurement succeeded.
    """
    from consentry.detectors.calibration_report import summary_text, write_report
    from consentry.detectors.calibration_run import calibrate, scan_photos
    from consentry.gateway.wiring import build_analyzer
    from consentry.policies.config import config_file

    settings = load_settings()
    root = Path(args.dir)
    photos = scan_photos(root)  # bad folders fail here, before the models load
    quiet_model_libraries()
    result = calibrate(
        photos,
        build_analyzer(settings),
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        root=root,
    )
    report = write_report(
        result,
        Path(args.report) if args.report else settings.data_dir / "calibration-report.html",
        settings.match_threshold,
    )
    config = None
    if args.write_config is not None:
        config = Path(args.write_config) if args.write_config else config_file()
        write_match_threshold(config, result.chosen.point.threshold)
    if args.json:
        out = result.as_dict() | {"report": str(report), "config_written": str(config) if config else None}
        print(json.dumps(out, indent=2))
        return 0
    print(summary_text(result, settings.match_threshold))
    print(f"report: {report}")
    if config is not None:
        print(f"match_threshold = {result.chosen.point.threshold} written to {config}")
    return 0


def write_match_threshold(config: Path, threshold: float) -> None:
    """Set ``match_threshold`` in a TOML file, keeping its other keys (comments are lost:
    tomli_w writes data, not layout). Written to a temporary file and renamed into place, so
    a crash leaves the old file or the new one, never half of one."""
    data: dict[str, Any] = {}
    if config.exists():
        try:
            data = tomllib.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"cannot read {config}: {exc}", code=codes.CONFIG_INVALID) from exc
    data["match_threshold"] = float(threshold)
    config.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{config.name}.", suffix=".tmp", dir=config.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(tomli_w.dumps(data).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if config.exists():
            os.chmod(tmp, config.stat().st_mode & 0o7777)
        os.replace(tmp, config)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ConsentryError(
                f"cannot write {config}: {exc.strerror}", code=codes.CONFIG_WRITE_FAILED
            ) from exc
        raise
