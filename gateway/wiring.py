"""Builds a Gate from settings: database, models, and the configured stage list."""

from __future__ import annotations

from gateway import __version__
from policies.config import EmbedderKind, Settings
from policies.errors import ConfigurationError


def build_analyzer(settings: Settings):  # type: ignore[no-untyped-def]
    from detectors.analyzer import FaceAnalyzer
    from detectors.detection import FaceDetector
    from detectors.embedders import DlibResNetEmbedder
    from detectors.facenet_embedder import FacenetEmbedder

    detector = FaceDetector(device=settings.device, min_face_px=settings.min_face_px)
    if settings.embedder is EmbedderKind.facenet:
        if settings.facenet_weights is None:
            raise ConfigurationError(
                "embedder=facenet needs facenet_weights (a state-dict file)", code="model.weights_missing"
            )
        embedder = FacenetEmbedder(settings.facenet_weights, device=settings.device)
    else:
        embedder = DlibResNetEmbedder(device=settings.device)
    return FaceAnalyzer(detector, embedder)


def build_generator(settings: Settings):  # type: ignore[no-untyped-def]
    from generation.diffusers_backend import DiffusersTextToImage

    assert settings.model_dir is not None
    return DiffusersTextToImage(settings.model_dir, device=settings.device)


def build_pipeline(gate):  # type: ignore[no-untyped-def]
    from gateway import stages
    from gateway.pipeline import Pipeline
    from provenance.keys import load_signing_material

    s = gate.settings
    allow_unknown = s.unknown_faces.value == "allow"
    keys_dir = s.keys_dir
    return Pipeline(
        [
            ("consent", stages.ConsentStage(gate.subjects, s.deny_terms)),
            (
                "verify_refs",
                stages.ReferenceFacesStage(gate.analyzer, gate.index, s.match_threshold, allow_unknown),
            ),
            ("generate", stages.GenerateStage(gate.generator)),
            (
                "verify_output",
                stages.OutputFacesStage(gate.analyzer, gate.index, s.match_threshold, s.require_output_face),
            ),
            ("watermark", stages.WatermarkStage(gate.watermarker)),
            (
                "sign",
                stages.SignStage(
                    lambda: load_signing_material(keys_dir), gate.watermarker.algorithm, __version__
                ),
            ),
        ],
        timeout_s=s.stage_timeout_s,
    )


async def open_gate(settings: Settings, *, analyzer=None, generator=None):  # type: ignore[no-untyped-def]
    """Open the database (migrating it), load the models once, and assemble the pipeline."""
    import asyncio

    from gateway.service import Gate
    from gateway.storage.db import Database

    db = Database(settings.database_url)
    await db.migrate()
    try:
        analyzer = analyzer or await asyncio.to_thread(build_analyzer, settings)
        generator = generator or await asyncio.to_thread(build_generator, settings)
    except BaseException:
        await db.dispose()
        raise
    return Gate(settings, db, analyzer, generator, build_pipeline)
