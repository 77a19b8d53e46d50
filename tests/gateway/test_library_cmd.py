"""``consentry enroll --library``: enrolling a group found in a photo library, for real.

The library is 100 LFW photos of 10 people, shuffled and renamed
(:mod:`tests.detectors.library_photos`); scanning and grouping are tested in
``tests/detectors/test_library.py``, the enrollment through the gate and the command here.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from consentry.detectors.library import FaceGroup, LibraryScan, enrollment_photos, group_faces, scan_library
from consentry.gateway.cli.library_cmd import cmd_enroll_library, enroll_group
from consentry.gateway.gate import Gate
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError, ConflictError
from tests.detectors.library_photos import build_library, link_library, majority

pytestmark = pytest.mark.slow
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the gate fixture lives in that loop


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> tuple[Path, dict[str, str]]:
    return build_library(tmp_path_factory.mktemp("library") / "photos", faces_dir)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gate(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dev_keys: Path
) -> AsyncIterator[Gate]:
    data = tmp_path_factory.mktemp("library-data")
    g = await open_gate(Settings(data_dir=data, device="cpu", model_dir=tiny_model, keys_dir=dev_keys))
    yield g
    await g.close()


@pytest.fixture(scope="module")
def scan(gate: Gate, library: tuple[Path, dict[str, str]]) -> LibraryScan:
    return scan_library(
        library[0],
        gate.analyzer,
        min_face_px=gate.settings.min_enroll_face_px,
        max_image_bytes=gate.settings.max_image_bytes,
        max_image_pixels=gate.settings.max_image_pixels,
    )


@in_module_loop
async def test_enroll_the_group_of_one_person(scan: LibraryScan, gate: Gate, library) -> None:
    _, truth = library
    groups = group_faces(scan, gate.settings.match_threshold)
    powell = next(g for g in groups if majority(g, truth) == "Colin_Powell")
    chosen = enrollment_photos(powell)
    assert len(chosen) == 8 and {truth[p.name] for p in chosen} == {"Colin_Powell"}

    identity = await enroll_group(gate, powell, "Colin from the library")
    stored = await gate.subjects.get(identity.id)
    assert (stored.label, stored.status) == ("Colin from the library", "active")
    assert identity.id in (await gate.index.get()).identities

    # The normal enrollment rules apply, and their errors come through unchanged.
    with pytest.raises(ConflictError) as dup:
        await enroll_group(gate, powell, "the same person again")
    assert dup.value.code == "enroll.duplicate_identity"
    two = FaceGroup(99, powell.faces[:2])
    with pytest.raises(BadInputError) as few:
        await enroll_group(gate, two, "too few")
    assert few.value.code == "enroll.too_few_photos"
    crowded = next(f for f in scan.faces if f.large_faces > 1)  # a frame with a large bystander
    with pytest.raises(BadInputError) as none:
        await enroll_group(gate, FaceGroup(98, (crowded,)), "nobody alone")
    assert none.value.code == "enroll.too_few_photos"


# -- the command --------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """Typed answers on what looks like a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def small_library(tmp_path: Path, faces_dir: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Path:
    """5 photos of Tony Blair and 3 of Hugo Chavez, plus a broken file; a fresh data dir."""
    monkeypatch.setenv("CONSENTRY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSENTRY_MODEL_DIR", str(tiny_model))
    monkeypatch.setenv("CONSENTRY_DEVICE", "cpu")
    monkeypatch.delenv("CONSENTRY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # default sheet folders land here
    lfw = faces_dir / "lfw"
    photos = [lfw / "Tony_Blair" / f"Tony_Blair_{n:04d}.jpg" for n in (2, 3, 4, 6, 9)]
    photos += [lfw / "Hugo_Chavez" / f"Hugo_Chavez_{n:04d}.jpg" for n in (1, 2, 3)]
    root = tmp_path / "camera"
    link_library(root, photos, seed=1)
    (root / "broken.jpg").symlink_to(faces_dir / "invalid" / "truncated.jpg")
    return root


def identity_label(identity_id: str) -> str:
    async def look() -> str:
        g = await open_gate(Settings())
        try:
            return (await g.subjects.get(identity_id)).label
        finally:
            await g.close()

    return asyncio.run(look())


def args(root: Path, **kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"library": str(root), "pick": None, "label": None, "sheets": None, **kw})


def test_cli_pick(small_library: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    sheets = tmp_path / "sheets"
    assert cmd_enroll_library(args(small_library, pick=1, label="Tony", sheets=str(sheets))) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["label"], result["group"], result["photos"]) == ("Tony", 1, 5)
    assert "broken.jpg: [image.invalid]" in captured.err
    assert sorted(p.name for p in sheets.iterdir()) == ["group_001.png", "group_002.png"]
    assert identity_label(result["id"]) == "Tony"


def test_cli_interactive_pick(small_library: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", Terminal("seven\n2\n"))
    assert cmd_enroll_library(args(small_library)) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["group"], result["photos"], result["label"]) == (2, 3, "camera group 2")
    assert "'seven' is not a group number" in captured.err
    assert len(list(small_library.parent.glob("consentry-sheets-*/group_00?.png"))) == 2
    assert "group_001.png" in captured.err and "group_002.png" in captured.err


def test_cli_without_pick_and_without_a_terminal_exits_2(small_library: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))
    assert cmd_enroll_library(args(small_library)) == 2
    assert "--pick" in capsys.readouterr().err
    assert not (small_library.parent / "data").exists()  # nothing opened, nothing written


def test_cli_pick_out_of_range(small_library: Path, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(BadInputError) as err:
        cmd_enroll_library(args(small_library, pick=3))
    assert err.value.code == "library.no_such_group"
