"""A photo library built from the shared LFW photos, for the library tests (detectors and CLI).

The photos are symlinked into a temporary folder under neutral names, so the code sees nothing
but pixels; the test alone keeps the name -> person map. Ground truth is per face: the face
nearest the centre of an LFW frame is the labelled person; every other face (bystanders) has no
known label and is left out of purity and completeness.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from consentry.detectors.library import FaceGroup, LibraryFace

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


def build_library(root: Path, faces_dir: Path) -> tuple[Path, dict[str, str]]:
    """All 100 LFW photos under neutral names, plus a broken file, a text file and a hidden
    thumbnail cache; returns the folder and the name -> person map."""
    truth = link_library(root, sorted((faces_dir / "lfw").glob("*/*.jpg")), seed=4)
    (root / "old").mkdir()
    (root / "old" / "broken.jpg").symlink_to(faces_dir / "invalid" / "truncated.jpg")
    (root / "notes.txt").write_text("not a photo")
    (root / ".thumbnails").mkdir()  # hidden: a cache that would double every face
    (root / ".thumbnails" / "IMG_0001.jpg").symlink_to(root / "IMG_0001.jpg")
    return root, truth


def person_of(face: LibraryFace, truth: dict[str, str]) -> str | None:
    x, y = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    centred = max(abs(x - LFW_SIDE / 2), abs(y - LFW_SIDE / 2)) <= CENTRE_TOLERANCE_PX
    return truth[face.path.name] if centred else None


def majority(group: FaceGroup, truth: dict[str, str]) -> str | None:
    known = [p for p in (person_of(f, truth) for f in group.faces) if p is not None]
    return Counter(known).most_common(1)[0][0] if known else None
