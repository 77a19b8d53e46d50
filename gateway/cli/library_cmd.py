"""``consentry enroll --library DIR``: enroll a person found in a local photo library.

Finding, grouping and drawing the faces is the detectors' (:mod:`consentry.detectors.library`,
:mod:`consentry.detectors.contact_sheets`); this adapter prints, asks which group, and enrolls
the chosen group's photos through ``gate.enroll`` like any other enrollment.

Human-facing text (progress, skipped files, the list of groups, prompts) goes to stderr; the
one JSON line of the enrolled identity goes to stdout, as with ``consentry enroll``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consentry.detectors.contact_sheets import write_contact_sheets
from consentry.detectors.library import FaceGroup, enrollment_photos, find_images, group_faces, scan_library
from consentry.gateway.cli.common import load_settings, with_gate
from consentry.gateway.requests import EnrollmentRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR, PrincipalView
from consentry.policies import codes
from consentry.policies.errors import BadInputError

if TYPE_CHECKING:
    from consentry.gateway.gate import Gate
    from consentry.gateway.storage.subjects import IdentityView

# Beyond this many, the listing stops (a big library has many one-face groups); every group
# still has its sheet and can be picked by number.
LISTED_GROUPS = 40


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _ask(prompt: str) -> str | None:
    """One line from stdin after a prompt on stderr; None at end of input."""
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.strip() if line else None


def _progress(total: int) -> Any:
    """A progress bar on stderr, silent when stderr is not a terminal (logs, pipes, tests)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="photo", desc="scanning", file=sys.stderr, disable=not sys.stderr.isatty())


def _list_groups(groups: list[FaceGroup]) -> None:
    for g in groups[:LISTED_GROUPS]:
        usable = len(enrollment_photos(g, max_photos=None))
        _say(f"  {g.number:>4}: {g.size:>4} faces in {g.photos:>4} photos, {usable:>4} usable   {g.sheet}")
    if len(groups) > LISTED_GROUPS:
        _say(f"  … and {len(groups) - LISTED_GROUPS} smaller groups (sheets beside the ones above)")


def _choose(groups: list[FaceGroup]) -> FaceGroup | None:
    while True:
        answer = _ask(f"enroll which group? [1-{len(groups)}, q to quit] ")
        if answer is None or answer.lower() in ("q", "quit"):
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(groups):
            return groups[int(answer) - 1]
        _say(f"  {answer!r} is not a group number")


async def enroll_group(
    gate: Gate,
    group: FaceGroup,
    label: str,
    *,
    actor: PrincipalView = LOCAL_ACTOR,
    max_photos: int = 8,
) -> IdentityView:
    """Enroll ``group`` as a new identity through ``gate.enroll`` (a :class:`Gate`).

    The photos are read again and go through the normal enrollment rules; their errors
    (``enroll.too_few_photos``, ``enroll.inconsistent``, ``enroll.duplicate_identity``, ...)
    surface unchanged, with photo numbers in the order of :func:`enrollment_photos`.
    """
    photos = enrollment_photos(group, max_photos)
    if not photos:
        crowded = max(f.large_faces for f in group.faces)
        raise BadInputError(
            f"group {group.number} has no photo where its face is the only large one "
            f"(its photos show up to {crowded} faces of at least {gate.settings.min_enroll_face_px} px)",
            code=codes.ENROLL_TOO_FEW_PHOTOS,
        )
    files = []
    for path in photos:
        try:
            files.append(path.read_bytes())
        except OSError as exc:
            raise BadInputError(
                f"cannot read {path}: {exc.strerror}", code=codes.INPUT_FILE_UNREADABLE
            ) from exc
    return await gate.enroll(actor, EnrollmentRequest(label=label, photos=tuple(files)))


def cmd_enroll_library(args: argparse.Namespace) -> int:
    """Scan ``args.library``, write contact sheets, and enroll the group ``args.pick`` (or the
    one the operator types). Exit 2 without touching anything when no group can be picked."""
    if args.pick is None and not sys.stdin.isatty():
        _say(
            "error [library.pick_required]: stdin is not a terminal, so no group can be chosen "
            "interactively; pass --pick N (run once interactively or look at the sheets to find N)"
        )
        return 2
    if args.pick is not None and args.pick < 1:
        raise BadInputError(f"--pick must be 1 or more, got {args.pick}", code=codes.LIBRARY_NO_SUCH_GROUP)
    settings = load_settings()
    root = Path(args.library).expanduser()
    files = find_images(root)
    if not files:
        raise BadInputError(f"no image files under {root}", code=codes.LIBRARY_EMPTY)
    # Made now, so that an unusable sheets folder is reported before the long scan, not after.
    try:
        if args.sheets:
            sheets_dir = Path(args.sheets).expanduser()
            sheets_dir.mkdir(parents=True, exist_ok=True)
        else:
            sheets_dir = Path(tempfile.mkdtemp(prefix="consentry-sheets-"))
    except OSError as exc:
        raise BadInputError(
            f"cannot use {args.sheets} for contact sheets: {exc}", code=codes.INPUT_SHEETS_DIR
        ) from exc

    async def run(gate: Any) -> int:
        with _progress(len(files)) as bar:
            scan = scan_library(
                root,
                gate.analyzer,
                min_face_px=gate.settings.min_enroll_face_px,
                max_image_bytes=gate.settings.max_image_bytes,
                max_image_pixels=gate.settings.max_image_pixels,
                files=files,
                progress=bar.update,
            )
        for skipped in scan.skipped:
            _say(f"skipped {skipped.path}: [{skipped.code}] {skipped.reason}")
        groups = group_faces(scan, gate.settings.match_threshold)
        if not groups:
            raise BadInputError(
                f"no face of at least {settings.min_enroll_face_px} px in {scan.files} images under {root}",
                code=codes.LIBRARY_NO_FACES,
            )
        groups = write_contact_sheets(
            groups,
            sheets_dir,
            max_image_bytes=gate.settings.max_image_bytes,
            max_image_pixels=gate.settings.max_image_pixels,
        )
        _say(f"{len(scan.faces)} faces in {scan.files} images, {len(groups)} groups; sheets in {sheets_dir}")
        _list_groups(groups)
        if args.pick is not None:
            if args.pick > len(groups):
                raise BadInputError(
                    f"--pick {args.pick}: there are only {len(groups)} groups",
                    code=codes.LIBRARY_NO_SUCH_GROUP,
                )
            group: FaceGroup | None = groups[args.pick - 1]
        else:
            group = _choose(groups)
        if group is None:
            _say("no group picked; nothing enrolled")
            return 2
        label = args.label or f"{root.resolve().name} group {group.number}"
        identity = await enroll_group(gate, group, label)
        used = len(enrollment_photos(group))
        print(json.dumps({"id": identity.id, "label": identity.label, "group": group.number, "photos": used}))
        return 0

    return asyncio.run(with_gate(run, models=True))
