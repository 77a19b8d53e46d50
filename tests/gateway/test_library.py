"""Enrollment from a photo library, for real: 100 LFW photos of 10 people, shuffled and renamed.

The photos are symlinked into a temporary folder under neutral names, so the code sees nothing
but pixels; the test alone keeps the name -> person map. Ground truth is per face: the face
nearest the centre of an LFW frame is the labelled person; every other face (bystanders) has no
known label and is left out of purity and completeness.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from consentry.detectors.clustering import completeness, purity
from consentry.detectors.enrollment import face_size
from consentry.gateway.cli.library_cmd import cmd_enroll_library
from consentry.gateway.library import (
    FaceGroup,
    LibraryFace,
    LibraryScan,
    enroll_group,
    enrollment_photos,
    group_faces,
    scan_library,
    write_contact_sheets,
)
from consentry.gateway.service import Gate
from consentry.gateway.wiring import open_gate
from consentry.policies.config import Settings
from consentry.policies.errors import BadInputError, ConflictError

pytestmark = pytest.mark.slow
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the gate fixture lives in that loop

LFW_SIDE = 250
CENTRE_TOLERANCE_PX = 30  # labelled faces are centred within 17 px in these photos


def link_library(root: Path, photos: list[Path], seed: int) -> dict[str, str]:
    """Symlink ``photos`` into ``root`` under shuffled neutral names; returns name -> person."""
    root.mkdir(parents=True)
    shuffled = photos[:]
    random.Random(seed).shuffle(shuffled)
    truth = {}
    for i, photo in enumerate(shuffled, start=1):
        name = f"IMG_{i:04d}.jpg"
        (root / name).symlink_to(photo)
        truth[name] = photo.parent.name
    return truth


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("library") / "photos"
    truth = link_library(root, sorted((faces_dir / "lfw").glob("*/*.jpg")), seed=4)
    (root / "old").mkdir()
    (root / "old" / "broken.jpg").symlink_to(faces_dir / "invalid" / "truncated.jpg")
    (root / "notes.txt").write_text("not a photo")
    (root / ".thumbnails").mkdir()  # hidden: a cache that would double every face
    (root / ".thumbnails" / "IMG_0001.jpg").symlink_to(root / "IMG_0001.jpg")
    return root, truth


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
    return scan_library(library[0], gate.analyzer, gate.settings)


def person_of(face: LibraryFace, truth: dict[str, str]) -> str | None:
    x, y = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    centred = max(abs(x - LFW_SIDE / 2), abs(y - LFW_SIDE / 2)) <= CENTRE_TOLERANCE_PX
    return truth[face.path.name] if centred else None


def majority(group: FaceGroup, truth: dict[str, str]) -> str | None:
    known = [p for p in (person_of(f, truth) for f in group.faces) if p is not None]
    return Counter(known).most_common(1)[0][0] if known else None


@in_module_loop
async def test_scan_skips_the_broken_file_and_ignores_the_rest(scan: LibraryScan, library) -> None:  # type: ignore[no-untyped-def]
    _, truth = library
    assert scan.files == 101  # 100 photos + the broken one; notes.txt and .thumbnails are not images
    assert [(s.path.name, s.code) for s in scan.skipped] == [("broken.jpg", "image.invalid")]
    assert {f.path.name for f in scan.faces} <= set(truth)
    assert all(face_size(f.box) >= 80 for f in scan.faces)


@in_module_loop
async def test_groups_are_the_people(scan: LibraryScan, gate: Gate, library) -> None:  # type: ignore[no-untyped-def]
    _, truth = library
    groups = group_faces(scan, gate.settings.match_threshold)
    assert [g.size for g in groups] == sorted((g.size for g in groups), reverse=True)
    assert [g.number for g in groups] == list(range(1, len(groups) + 1))
    faces = [f for g in groups for f in g.faces]
    predicted = [g.number for g in groups for _ in g.faces]
    labels = [person_of(f, truth) for f in faces]
    p, c = purity(predicted, labels), completeness(predicted, labels)
    labelled = sum(label is not None for label in labels)
    print(
        f"\nlibrary: {len(faces)} faces >= 80 px, {labelled} labelled (of 100 photos), "
        f"{len(groups)} groups, sizes {[g.size for g in groups]}; purity {p:.4f}, completeness {c:.4f}"
    )
    assert labelled >= 95 and labelled == len({f.path for f, lab in zip(faces, labels, strict=True) if lab})
    assert p >= 0.9 and c >= 0.9
    # The ten biggest groups are the ten people, one each.
    assert sorted(majority(g, truth) for g in groups[:10]) == sorted(set(truth.values()))


@in_module_loop
async def test_contact_sheets(scan: LibraryScan, gate: Gate, tmp_path: Path) -> None:
    groups = write_contact_sheets(group_faces(scan, gate.settings.match_threshold), tmp_path, gate.settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"group_{g.number:03d}.png" for g in groups]
    for g in groups:
        assert g.sheet is not None
        with Image.open(g.sheet) as sheet:
            assert sheet.size == (6 * 112, 36 + -(-g.size // 6) * 112)
            header = sheet.crop((0, 0, sheet.width, 36)).convert("L")
            assert header.getextrema()[1] > 200  # the group number is drawn in white
            cell = sheet.crop((0, 36, 112, 148)).convert("L")
            assert cell.getextrema()[1] - cell.getextrema()[0] > 60  # a face, not an empty cell


@in_module_loop
async def test_enroll_the_group_of_one_person(scan: LibraryScan, gate: Gate, library) -> None:  # type: ignore[no-untyped-def]
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


def test_cli_pick(small_library: Path, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    sheets = tmp_path / "sheets"
    assert cmd_enroll_library(args(small_library, pick=1, label="Tony", sheets=str(sheets))) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["label"], result["group"], result["photos"]) == ("Tony", 1, 5)
    assert "broken.jpg: [image.invalid]" in captured.err
    assert sorted(p.name for p in sheets.iterdir()) == ["group_001.png", "group_002.png"]
    assert identity_label(result["id"]) == "Tony"


def test_cli_interactive_pick(small_library: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("sys.stdin", Terminal("seven\n2\n"))
    assert cmd_enroll_library(args(small_library)) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["group"], result["photos"], result["label"]) == (2, 3, "camera group 2")
    assert "'seven' is not a group number" in captured.err
    assert len(list(small_library.parent.glob("consentry-sheets-*/group_00?.png"))) == 2
    assert "group_001.png" in captured.err and "group_002.png" in captured.err


def test_cli_without_pick_and_without_a_terminal_exits_2(small_library: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))
    assert cmd_enroll_library(args(small_library)) == 2
    assert "--pick" in capsys.readouterr().err
    assert not (small_library.parent / "data").exists()  # nothing opened, nothing written


def test_cli_pick_out_of_range(small_library: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(BadInputError) as err:
        cmd_enroll_library(args(small_library, pick=3))
    assert err.value.code == "library.no_such_group"
