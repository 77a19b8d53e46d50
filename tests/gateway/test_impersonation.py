"""Impersonation: a principal granted person A sends altered photos of protected people as
references for A. Every attempt must be refused (goal 100%); the codes are reported."""

from __future__ import annotations

import base64
import hashlib
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image, ImageFilter, ImageOps

from consentry.detectors.detection import FaceDetector
from consentry.policies.config import Settings
from tests.gateway.conftest import AppClient, b64

pytestmark = pytest.mark.asyncio(loop_scope="module")
SUBJECT = "George_W_Bush"
PROTECTED = ["Colin_Powell", "Tony_Blair", "Hugo_Chavez"]
_DETECTOR = FaceDetector(device="cpu")


def _face_crop(img: Image.Image) -> Image.Image:
    [face, *_] = _DETECTOR.detect([img])[0]
    x1, y1, x2, y2 = face.box
    m = 0.15 * (x2 - x1)
    return img.crop((int(x1 - m), int(y1 - m), int(x2 + m), int(y2 + m)))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _small_face(img: Image.Image) -> Image.Image:
    # LFW faces are about 100 px across in a 250 px frame: scale so the face is about 64 px.
    side = int(img.width * 64 / 100)
    return img.resize((side, side), Image.Resampling.LANCZOS)


ATTACKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "mirrored": ImageOps.mirror,
    "cropped to face": _face_crop,
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "blurred sigma 2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "jpeg 30": lambda im: _jpeg(im, 30),
    "rotated 15": lambda im: im.rotate(15, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
    "small 64 px face": _small_face,
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dev_keys: Path) -> Settings:
    # One principal sends every attempt within a second or two; the default burst (20) would
    # answer the 21st with rate.limited on a fast machine. Rate limits have their own tests.
    burst = len(PROTECTED) * len(ATTACKS)
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        model_dir=tiny_model,
        keys_dir=dev_keys,
        device="cpu",
        rate_limit_burst=burst,
    )


def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(client: AppClient, admin_key: str, faces_dir: Path) -> dict[str, str]:
    h = {"X-API-Key": admin_key}
    out = {}
    for name, role in [("op", "operator"), ("P", "requester")]:
        out[name] = (
            await client.post("/v1/principals", json={"name": name, "role": role}, headers=h)
        ).json()["api_key"]
    for person in [SUBJECT, *PROTECTED]:
        photos = [b64(faces_dir / "lfw" / person / f"{person}_{n:04d}.jpg") for n in (2, 3, 4, 5)]
        r = await client.post(
            "/v1/identities", json={"label": person, "photos": photos}, headers={"X-API-Key": out["op"]}
        )
        assert r.status_code == 201, r.text
        out[person] = r.json()["id"]
    grant = {
        "identity_id": out[SUBJECT],
        "principal": "P",
        "purposes": ["portrait"],
        "attested_by": "op",
        "consent_text_sha256": hashlib.sha256(b"c").hexdigest(),
    }
    assert (await client.post("/v1/grants", json=grant, headers={"X-API-Key": out["op"]})).status_code == 201
    return out


async def test_altered_photos_of_protected_people_are_refused(
    client: AppClient, world, faces_dir: Path
) -> None:
    outcomes: Counter[str] = Counter()
    released = []
    for person in PROTECTED:
        original = Image.open(faces_dir / "lfw" / person / f"{person}_0006.jpg").convert("RGB")
        for attack, alter in ATTACKS.items():
            body = {
                "subject_id": world[SUBJECT],
                "purpose": "portrait",
                "prompt": "a portrait",
                "references": [png_b64(alter(original))],
            }
            r = await client.post("/v1/generate", json=body, headers={"X-API-Key": world["P"]})
            code = r.json().get("code", "released")
            outcomes[code] += 1
            if r.status_code != 403:
                released.append((person, attack, r.status_code, code))
    total = len(PROTECTED) * len(ATTACKS)
    print(f"\nimpersonation attempts: {total}, refused {total - len(released)} ({outcomes})")
    assert not released, released
    # Most should be recognised as the protected person, not merely as unknown.
    assert outcomes["face.protected_identity"] >= 0.8 * total, outcomes
    assert np.isclose(sum(outcomes.values()), total)
