"""Shared fixtures: where the real test photos live.

The photos are never copied into the repository: they are read from ``../shared/faces`` beside
the checkout, or from ``$CONSENTRY_FACES_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FACES_DIR = Path(os.environ.get("CONSENTRY_FACES_DIR", REPO_ROOT.parent / "shared" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES_DIR / "manifest.csv").is_file():
        pytest.fail(f"test photos not found at {FACES_DIR}; set CONSENTRY_FACES_DIR")
    return FACES_DIR
