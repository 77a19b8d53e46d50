"""Writing a model folder all at once: built in a temporary sibling folder, then swapped into
place, so a crash or an error mid-build never leaves a half-written model where one is expected."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from consentry.policies import codes
from consentry.policies.errors import ConfigurationError


def staged_build(out_dir: Path, what: str, write: Callable[[Path], None]) -> None:
    """Run ``write(staging)`` and replace ``out_dir`` (absent, empty, or an old build the caller
    already agreed to replace) with the result; nothing of a failed build remains."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the {what} {out_dir}: {exc}", code=codes.MODEL_UNWRITABLE
        ) from exc
    try:
        write(staging)
        if out_dir.exists():
            retired = out_dir.with_name(f".{out_dir.name}.old-{staging.name[-8:]}")
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
