"""``face_batch_window_ms`` through the gate: concurrent requests share face-analysis batches,
and every one of them is still decided on its own images (the package's fakes, real storage)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

from PIL import Image

from consentry.gateway.requests import EnrollmentRequest, GenerationRequest, GrantRequest
from consentry.gateway.storage.principals import LOCAL_ACTOR
from consentry.gateway.testing import FingerprintAnalyzer, PhotoGenerator, synthetic_photo
from consentry.gateway.wiring import open_gate
from consentry.policies import codes
from consentry.policies.config import Settings
from consentry.policies.consent import Purpose
from consentry.policies.errors import RefusedError


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def test_concurrent_requests_share_face_batches_and_keep_their_own_decisions(
    tmp_path: Path, dev_keys: Path
) -> None:
    analyzer = FingerprintAnalyzer()
    ana = [png(analyzer.register(synthetic_photo(k), "ana")) for k in range(5)]
    ben = [png(analyzer.register(synthetic_photo(50 + k), "ben")) for k in range(4)]
    settings = Settings(
        data_dir=tmp_path, keys_dir=dev_keys, device="cpu", face_batch_window_ms=100, generation_concurrency=6
    )
    generator = PhotoGenerator(Image.open(io.BytesIO(ana[4])))
    gate = await open_gate(settings, analyzer=analyzer, generator=generator)
    try:
        subject = await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="Ana", photos=tuple(ana[:3])))
        await gate.enroll(LOCAL_ACTOR, EnrollmentRequest(label="Ben", photos=tuple(ben[:3])))
        studio = (await gate.create_principal(LOCAL_ACTOR, "studio", "requester")).principal
        terms = GrantRequest(
            identity_id=subject.id,
            principal=studio.id,
            purposes=(Purpose.portrait,),
            attested_by="test",
            consent_text_sha256=hashlib.sha256(b"consent").hexdigest(),
        )
        await gate.grant(LOCAL_ACTOR, terms)
        calls_before = analyzer.calls

        def ask(reference: bytes) -> GenerationRequest:
            return GenerationRequest(
                subject_id=subject.id, purpose=Purpose.portrait, prompt="a portrait", references=(reference,)
            )

        # Five requests with Ana's photo, one with Ben's: that one alone must be refused.
        outcomes = await asyncio.gather(
            *(gate.generate(studio, ask(ref)) for ref in [ana[3]] * 5 + [ben[3]]), return_exceptions=True
        )
        assert all(not isinstance(o, BaseException) for o in outcomes[:5]), outcomes
        assert isinstance(outcomes[5], RefusedError) and outcomes[5].code == codes.FACE_PROTECTED
        # 6 reference checks and 5 output checks, in fewer analyzer calls than that.
        assert analyzer.calls - calls_before < 11
    finally:
        await gate.close()
