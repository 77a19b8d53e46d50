"""A local photo library: find the faces, group them by person, pick enrollment photos.

The operator points the gate at a folder tree (a camera roll, a photo export); every face large
enough to enroll is detected and embedded, the faces are grouped by identity
(:mod:`detectors.clustering`), a contact sheet per group shows who is who
(:mod:`detectors.contact_sheets`), and the group the operator picks is enrolled by the gateway
(``consentry enroll --library``) through the normal enrollment, with the photos
:func:`enrollment_photos` picks: the same quality and duplicate rules as any enrollment, so a
library enrollment is never weaker than a hand-picked one.

Files are read with the same decoding limits as uploads; a file that cannot be read or decoded
is reported and skipped, never fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from consentry.detectors.analyzer import Analyzer
from consentry.detectors.clustering import cluster_embeddings
from consentry.detectors.enrollment import face_size
from consentry.detectors.images import DECODABLE_FORMATS, decode_image
from consentry.policies import codes
from consentry.policies.errors import BadInputError, ConsentryError

# Every file extension Pillow maps to a format we decode (".jpg", ".jpeg", ".png", ".webp", ...).
IMAGE_SUFFIXES = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in DECODABLE_FORMATS
)


@dataclass(frozen=True, slots=True)
class LibraryFace:
    """One face found in the library. ``large_faces`` counts the faces of its photo that are at
    least the scan's ``min_face_px`` (the gate's ``min_enroll_face_px``, measured as the
    enrollment rule measures them, :func:`detectors.enrollment.face_size`): only photos with
    exactly one can be enrollment photos."""

    path: Path
    box: tuple[float, float, float, float]
    probability: float
    embedding: np.ndarray
    large_faces: int


@dataclass(frozen=True, slots=True)
class SkippedFile:
    path: Path
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class LibraryScan:
    """What a scan found: image files seen, faces kept, files skipped with the reason."""

    root: Path
    files: int
    faces: tuple[LibraryFace, ...]
    skipped: tuple[SkippedFile, ...]


@dataclass(frozen=True, slots=True)
class FaceGroup:
    """One presumed person. ``number`` is 1-based, biggest group first; ``faces`` are ordered from
    most to least typical (similarity to the group's mean face); ``sheet`` is its contact sheet."""

    number: int
    faces: tuple[LibraryFace, ...]
    sheet: Path | None = None

    @property
    def size(self) -> int:
        return len(self.faces)

    @property
    def photos(self) -> int:
        return len({f.path for f in self.faces})


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` by extension, sorted; hidden folders and files are skipped
    (thumbnail caches such as ``.thumbnails`` would count every face twice). Symlinked files are
    followed, symlinked folders are not (no loops)."""
    if not root.is_dir():
        raise BadInputError(f"{root} is not a folder", code=codes.LIBRARY_NOT_A_FOLDER)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(folder) / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def scan_library(
    root: Path,
    analyzer: Analyzer,
    *,
    min_face_px: int,
    max_image_bytes: int,
    max_image_pixels: int,
    files: Sequence[Path] | None = None,
    batch_size: int = 16,
    progress: Callable[[int], Any] | None = None,
) -> LibraryScan:
    """Detect and embed the faces of every image under ``root`` (blocking: torch).

    ``files`` is ``find_images(root)`` when the caller has it already (to size a progress bar).
    Only faces of at least ``min_face_px`` (``face_size``; the gate passes its
    ``min_enroll_face_px``) are kept: smaller ones could not be enrolled and embed less reliably.
    Files are decoded under ``max_image_bytes`` and ``max_image_pixels``, as uploads are.
    ``progress(n)`` is called after each batch with the number of files it held.
    """
    paths = list(files) if files is not None else find_images(root)
    faces: list[LibraryFace] = []
    skipped: list[SkippedFile] = []
    for batch in _batches(paths, batch_size):
        images: list[Image.Image] = []
        decoded: list[Path] = []
        for path in batch:
            try:
                data = path.read_bytes()
                images.append(decode_image(data, max_bytes=max_image_bytes, max_pixels=max_image_pixels))
                decoded.append(path)
            except OSError as exc:
                skipped.append(SkippedFile(path, codes.INPUT_FILE_UNREADABLE, exc.strerror or str(exc)))
            except ConsentryError as exc:
                skipped.append(SkippedFile(path, exc.code, exc.detail))
        for path, found in zip(decoded, analyzer.analyze(images) if images else [], strict=True):
            # The size measure of the enrollment rule, so that "large" means the same thing here.
            large = [i for i, face in enumerate(found.faces) if face_size(face.box) >= min_face_px]
            faces.extend(
                LibraryFace(
                    path, found.faces[i].box, found.faces[i].probability, found.embeddings[i], len(large)
                )
                for i in large
            )
        if progress is not None:
            progress(len(batch))
    return LibraryScan(root, len(paths), tuple(faces), tuple(skipped))


def group_faces(scan: LibraryScan, threshold: float) -> list[FaceGroup]:
    """Group the scanned faces by person (average linkage at ``threshold``), biggest first."""
    if not scan.faces:
        return []
    matrix = np.stack([f.embedding for f in scan.faces]).astype(np.float64)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    clustering = cluster_embeddings(matrix, threshold)
    groups = []
    for number in range(clustering.n_groups):
        rows = clustering.members(number)
        mean = matrix[rows].mean(axis=0)
        typical = matrix[rows] @ (mean / max(float(np.linalg.norm(mean)), 1e-12))
        # Stable sort: equally typical faces keep their scan order, so the result is deterministic.
        order = rows[np.argsort(-typical, kind="stable")]
        groups.append(FaceGroup(number + 1, tuple(scan.faces[i] for i in order)))
    return groups


def enrollment_photos(group: FaceGroup, max_photos: int | None = 8) -> list[Path]:
    """The group's best enrollment photos (all of them when ``max_photos`` is None): most typical
    first, only photos where this face is the one large face (the enrollment rule), each once."""
    chosen: list[Path] = []
    for face in group.faces:
        if face.large_faces == 1 and face.path not in chosen:
            chosen.append(face.path)
            if len(chosen) == max_photos:
                break
    return chosen
