"""Commands that load no model do not import the model libraries (issue 12, item 6).

Each case runs ``main`` in a fresh interpreter and lists which heavy libraries ended up in
``sys.modules``. Only what holds is asserted: the parser, the key commands, the watermark tools
and input errors found before the gate opens, and gate commands that load no model. The model
libraries are imported only where a model is built, OpenCV only where pixels are touched.
Timings are ``bench/cli_startup.py``'s, not a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HEAVY = ("torch", "diffusers", "transformers", "cv2", "facenet_pytorch", "skimage")
# Slow to import and needed only by a server or a migration: a gate command on a database that
# is already at head imports neither (Alembic ~0.2 s, litestar with pdb ~0.2 s).
SERVER_ONLY = ("alembic", "litestar", "uvicorn")
# Imported where a manifest is signed or read (generate, verify), by no other gate command.
SIGNING = ("c2pa",)
# OpenCV is the one heavy library a watermark command may import (to mark, or to search an
# unmarked image's scales).
WATERMARK_OK = {"cv2"}

PROBE = f"""
import json, sys
from consentry.gateway.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
server = sorted(m for m in {SERVER_ONLY + SIGNING!r} if m in sys.modules)
print("PROBE " + json.dumps({{"exit": code, "heavy": heavy, "server": server}}))
"""


def probe(cwd: Path, *argv: str, server: bool = False) -> tuple[int, list[str]]:
    """Exit code and heavy modules (or, with ``server``, the server-only and signing modules)
    imported by ``consentry ARGV`` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENTRY_")}
    env |= {"CONSENTRY_DATA_DIR": str(cwd / "data"), "CONSENTRY_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, f"no probe output; stderr: {done.stderr[-3000:]}"
    result = json.loads(lines[-1].removeprefix("PROBE "))
    return int(result["exit"]), list(result["server" if server else "heavy"])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    Image.new("RGB", (256, 256), (90, 120, 150)).save(tmp_path / "plain.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    return tmp_path


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["watermark", "decode", "--help"],
        ["audit", "verify", "--help"],
        ["grant"],  # a parse error: exit 2 from argparse
    ],
)
def test_parsing_imports_no_heavy_library(workdir: Path, argv: list[str]) -> None:
    code, heavy = probe(workdir, *argv)
    assert code in (0, 2)
    assert heavy == []


def test_key_and_watermark_commands_import_no_model_library(workdir: Path) -> None:
    assert probe(workdir, "keys", "init") == (0, [])
    assert probe(workdir, "keys", "rotate-watermark") == (0, [])
    # An unreadable file is reported before the watermark code (and OpenCV) is imported.
    assert probe(workdir, "watermark", "decode", "notes.txt") == (2, [])
    assert probe(workdir, "watermark", "embed", "notes.txt", "out.png") == (2, [])
    code, heavy = probe(workdir, "watermark", "embed", "plain.png", "marked.png")
    assert code == 0 and set(heavy) <= WATERMARK_OK
    # A mark found at the original scale needs no OpenCV (numpy computes the same luma); the
    # embedder's mask and the decoder's scale search for unmarked images do.
    assert probe(workdir, "watermark", "decode", "marked.png") == (0, [])
    code, heavy = probe(workdir, "watermark", "decode", "plain.png")
    assert code == 0 and set(heavy) <= WATERMARK_OK


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "missing.png"],
        [
            "grant",
            "idn_x",
            "--principal",
            "p",
            "--purpose",
            "portrait",
            "--attested-by",
            "me",
            "--expires",
            "soon",
        ],
        ["generate", "--as", "studio", "--prompt", "a cat", "--reference", "missing.png"],
        ["enroll", "--label", "A"],
        ["enroll", "--label", "A", "missing.jpg", "--challenge", "chl_x"],  # half a liveness answer
    ],
)
def test_input_errors_found_before_the_gate_import_nothing_heavy(workdir: Path, argv: list[str]) -> None:
    assert probe(workdir, *argv) == (2, [])


def test_gate_commands_import_no_heavy_library(workdir: Path) -> None:
    # open_gate makes the watermarker, but OpenCV is imported only when pixels are read or marked.
    assert probe(workdir, "audit", "verify") == (0, [])
    assert probe(workdir, "principal", "add", "x", "--role", "requester") == (0, [])
    assert probe(workdir, "enrollments", "challenge") == (0, [])


def test_gate_commands_on_a_migrated_database_import_no_server_library(workdir: Path) -> None:
    """Alembic runs on the first command (the empty database is migrated), never again; the
    HTTP server's libraries are not a command's."""
    assert probe(workdir, "audit", "verify", server=True)[0] == 0  # creates and migrates
    for argv in (
        ["audit", "verify"],
        ["principal", "add", "y", "--role", "requester"],
        ["revoke", "gnt_unknown"],
    ):
        code, server = probe(workdir, *argv, server=True)
        assert code in (0, 2) and server == [], argv
    # verify reads the C2PA manifest: c2pa, and still no server library.
    assert probe(workdir, "verify", "plain.png", server=True) == (0, list(SIGNING))
