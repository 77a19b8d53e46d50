"""A calibration run and its report, without models: a stub analyzer whose faces and embeddings
are read off each photo's colour, so every answer is known. The real run on LFW, through
``consentry calibrate``, is ``tests/gateway/test_calibrate_lfw.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
from PIL import Image

from consentry.detectors.analyzer import AnalyzedImage
from consentry.detectors.calibration_report import render_report, summary_text, write_report
from consentry.detectors.calibration_run import Photo, calibrate, pick_face, scan_photos
from consentry.detectors.detection import DetectedFace
from consentry.policies.errors import BadInputError


class _Limits(TypedDict):
    max_image_bytes: int
    max_image_pixels: int


LIMITS: _Limits = {"max_image_bytes": 10**6, "max_image_pixels": 10**6}
SIDE = 100
CENTRAL = (35.0, 35.0, 65.0, 65.0)  # contains the image centre
BYSTANDER = (0.0, 0.0, 45.0, 45.0)  # larger, but off-centre
NO_FACE = 255  # blue channel of a photo in which the stub finds nothing


def _face(box: tuple[float, float, float, float]) -> DetectedFace:
    x1, y1, x2, y2 = box
    return DetectedFace(box, 0.99, ((x1, y1), (x2, y1), ((x1 + x2) / 2, (y1 + y2) / 2), (x1, y2), (x2, y2)))


class StubEmbedder:
    """Only the name is read; the stub analyzer makes the embeddings itself."""

    name = "stub"
    dim = 8
    chip_size = SIDE
    chip_padding = 0.0

    def embed(self, chips: np.ndarray) -> np.ndarray:
        raise AssertionError("the stub analyzer never cuts chips")


class StubAnalyzer:
    """Red is the person, green the photo. Each photo shows the person's centred face and, off
    centre, a larger bystander whose embedding is nobody's: picking it would break every pair."""

    embedder = StubEmbedder()

    def __init__(self) -> None:
        self.calls: list[int] = []

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        self.calls.append(len(images))
        out = []
        for image in images:
            pixel = image.getpixel((0, 0))
            assert isinstance(pixel, tuple)  # RGB
            r, g, b = pixel
            if b == NO_FACE:
                out.append(AnalyzedImage((), np.zeros((0, 8), np.float32)))
                continue
            person = np.zeros(8)
            person[r // 50] = 1.0
            person[7] = 0.05 * (g // 50)  # a little per-photo variation
            bystander = np.zeros(8)
            bystander[6] = 1.0
            vectors = np.stack([bystander, person / np.linalg.norm(person)]).astype(np.float32)
            out.append(AnalyzedImage((_face(BYSTANDER), _face(CENTRAL)), vectors))
        return out


def _photo(path: Path, person: int, photo: int, blue: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIDE, SIDE), (person * 50 + 10, photo * 50 + 10, blue)).save(path, format="PNG")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """3 people x 3 photos, plus one photo without a face, one unreadable file, a hidden file
    and a file directly in the folder (ignored)."""
    root = tmp_path / "people"
    for person in range(3):
        for photo in range(3):
            _photo(root / f"p{person}" / f"{photo}.png", person, photo)
    _photo(root / "p0" / "noface.png", 0, 0, blue=NO_FACE)
    (root / "p1" / "notes.txt").write_text("not an image")
    _photo(root / "p2" / ".hidden.png", 2, 0)
    _photo(root / "loose.png", 0, 0)
    return root


def test_scan_photos_reads_person_folders_only(folder: Path) -> None:
    photos = scan_photos(folder)
    assert [(p.person, p.path.name) for p in photos] == [
        ("p0", "0.png"),
        ("p0", "1.png"),
        ("p0", "2.png"),
        ("p0", "noface.png"),
        ("p1", "0.png"),
        ("p1", "1.png"),
        ("p1", "2.png"),
        ("p1", "notes.txt"),
        ("p2", "0.png"),
        ("p2", "1.png"),
        ("p2", "2.png"),
    ]


def test_scan_photos_refuses_missing_and_single_person_folders(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as missing:
        scan_photos(tmp_path / "nope")
    assert missing.value.code == "calibrate.dir_missing"
    _photo(tmp_path / "one" / "p0" / "0.png", 0, 0)
    with pytest.raises(BadInputError) as one:
        scan_photos(tmp_path / "one")
    assert one.value.code == "calibrate.too_few_people"


def test_pick_face_prefers_the_largest_central_face_else_the_nearest() -> None:
    faces = [_face(BYSTANDER), _face(CENTRAL), _face((40.0, 40.0, 60.0, 60.0))]
    assert pick_face(faces, (SIDE, SIDE)) == 1
    edges = [_face((0.0, 0.0, 10.0, 10.0)), _face((80.0, 45.0, 95.0, 55.0))]
    assert pick_face(edges, (SIDE, SIDE)) == 1


def test_calibrate_accounts_for_every_photo_and_separates_the_people(folder: Path) -> None:
    analyzer = StubAnalyzer()
    photos = scan_photos(folder)
    result = calibrate(photos, analyzer, **LIMITS)
    assert analyzer.calls == [10]  # one batch; the unreadable file never reaches the analyzer
    assert result.root == folder
    assert [p.name for p in result.undetected] == ["noface.png"]
    assert [p.name for p in result.unreadable] == ["notes.txt"]
    assert (len(result.samples), result.people, result.embedder) == (9, 3, "stub")
    assert (result.scores.genuine.size, result.scores.impostor.size) == (9, 27)
    assert result.best.accuracy == 1.0 and result.errors == ()
    assert result.chosen.point.threshold >= result.best.threshold
    d = result.as_dict()
    assert d["photos"] + len(d["undetected"]) + len(d["unreadable"]) == len(photos)
    assert set(d["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert d["threshold"] == result.chosen.point.threshold


def test_calibrate_batches_and_refuses_what_cannot_be_measured(tmp_path: Path) -> None:
    many = tmp_path / "many"
    for person in range(2):
        for photo in range(10):
            _photo(many / f"p{person}" / f"{photo}.png", person, photo % 4)
    analyzer = StubAnalyzer()
    calibrate(scan_photos(many), analyzer, **LIMITS)
    assert analyzer.calls == [16, 4]

    faceless = tmp_path / "faceless"
    for person in range(2):
        _photo(faceless / f"p{person}" / "0.png", person, 0, blue=NO_FACE)
    with pytest.raises(BadInputError) as none:
        calibrate(scan_photos(faceless), StubAnalyzer(), **LIMITS)
    assert none.value.code == "calibrate.no_faces"

    singles = tmp_path / "singles"
    for person in range(3):
        _photo(singles / f"p{person}" / "0.png", person, 0)
    with pytest.raises(BadInputError) as pairs:
        calibrate(scan_photos(singles), StubAnalyzer(), **LIMITS)
    assert pairs.value.code == "calibrate.no_genuine_pairs"

    mixed = (Photo("p0", singles / "p0" / "0.png"), Photo("p1", faceless / "p1" / "0.png"))
    with pytest.raises(BadInputError) as one:
        calibrate(mixed, StubAnalyzer(), **LIMITS)
    assert one.value.code == "calibrate.too_few_people"


def test_report_and_summary(folder: Path, tmp_path: Path) -> None:
    result = calibrate(scan_photos(folder), StubAnalyzer(), **LIMITS)
    html = render_report(result, current_threshold=0.93)
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 2
    assert "<polyline" in html and "configured now" in html
    assert "src=" not in html and "href=" not in html and "<script" not in html
    path = write_report(result, tmp_path / "out" / "report.html", 0.93)
    assert path.read_text(encoding="utf-8") == html
    text = summary_text(result, 0.93)
    assert text.startswith("stub: 9 photos of 3 people with a face; 1 undetected, 1 unreadable")
    assert "pairs: 9 genuine, 27 impostor" in text and text.endswith("configured now 0.9300")
