"""A photo library, for real: 100 LFW photos of 10 people, shuffled and renamed
(:mod:`tests.detectors.library_photos`): scanning, grouping by person, contact sheets.

The analyzer is the production one for the default settings (MTCNN, our alignment, the torch
dlib-ResNet embedder) on the CPU; enrolling a group is the gateway's (``test_library_cmd``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.detectors.clustering import completeness, purity
from consentry.detectors.contact_sheets import write_contact_sheets
from consentry.detectors.detection import FaceDetector
from consentry.detectors.embedders import DlibResNetEmbedder
from consentry.detectors.enrollment import face_size
from consentry.detectors.library import LibraryScan, group_faces, scan_library
from consentry.policies.config import Settings
from tests.detectors.library_photos import build_library, majority, person_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(device="cpu")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> tuple[Path, dict[str, str]]:
    return build_library(tmp_path_factory.mktemp("library") / "photos", faces_dir)


@pytest.fixture(scope="module")
def scan(settings: Settings, library: tuple[Path, dict[str, str]]) -> LibraryScan:
    analyzer = FaceAnalyzer(
        FaceDetector(device=settings.device, min_face_px=settings.min_face_px),
        DlibResNetEmbedder(device=settings.device),
    )
    return scan_library(
        library[0],
        analyzer,
        min_face_px=settings.min_enroll_face_px,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )


def test_scan_skips_the_broken_file_and_ignores_the_rest(
    scan: LibraryScan, library: tuple[Path, dict[str, str]]
) -> None:
    _, truth = library
    assert scan.files == 101  # 100 photos + the broken one; notes.txt and .thumbnails are not images
    assert [(s.path.name, s.code) for s in scan.skipped] == [("broken.jpg", "image.invalid")]
    assert {f.path.name for f in scan.faces} <= set(truth)
    assert all(face_size(f.box) >= 80 for f in scan.faces)


def test_groups_are_the_people(
    scan: LibraryScan, settings: Settings, library: tuple[Path, dict[str, str]]
) -> None:
    _, truth = library
    groups = group_faces(scan, settings.match_threshold)
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
    majorities = [majority(g, truth) for g in groups[:10]]
    assert None not in majorities
    assert sorted(m for m in majorities if m is not None) == sorted(set(truth.values()))


def _grey_range(image: Image.Image) -> tuple[float, float]:
    """(darkest, brightest) grey level."""
    low, high = image.convert("L").getextrema()
    assert isinstance(low, int | float) and isinstance(high, int | float)  # one band
    return low, high


def test_contact_sheets(scan: LibraryScan, settings: Settings, tmp_path: Path) -> None:
    groups = write_contact_sheets(
        group_faces(scan, settings.match_threshold),
        tmp_path,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"group_{g.number:03d}.png" for g in groups]
    for g in groups:
        assert g.sheet is not None
        with Image.open(g.sheet) as sheet:
            assert sheet.size == (6 * 112, 36 + -(-g.size // 6) * 112)
            header = _grey_range(sheet.crop((0, 0, sheet.width, 36)))
            assert header[1] > 200  # the group number is drawn in white
            cell = _grey_range(sheet.crop((0, 36, 112, 148)))
            assert cell[1] - cell[0] > 60  # a face, not an empty cell
