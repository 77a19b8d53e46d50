"""Builds a Gate from settings: database, models, and the configured stage list."""

from __future__ import annotations

import threading

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from consentry.detectors.analyzer import FaceAnalyzer
from consentry.detectors.detection import FaceDetector
from consentry.detectors.embedders import DlibResNetEmbedder, Embedder
from consentry.detectors.facenet_embedder import FacenetEmbedder
from consentry.gateway import __version__, stages
from consentry.gateway.pipeline import Pipeline
from consentry.gateway.service import Gate
from consentry.gateway.storage.db import Database
from consentry.generation.base import Generator
from consentry.generation.diffusers_backend import DiffusersTextToImage
from consentry.policies.config import EmbedderKind, Settings, UnknownFaces
from consentry.policies.errors import ConfigurationError
from consentry.provenance.keys import load_signing_material


def build_analyzer(settings: Settings) -> FaceAnalyzer:
    detector = FaceDetector(device=settings.device, min_face_px=settings.min_face_px)
    embedder: Embedder
    if settings.embedder is EmbedderKind.facenet:
        if settings.facenet_weights is None:
            raise ConfigurationError(
                "embedder=facenet needs facenet_weights (a state-dict file)", code="model.weights_missing"
            )
        embedder = FacenetEmbedder(settings.facenet_weights, device=settings.device)
    else:
        embedder = DlibResNetEmbedder(device=settings.device)
    return FaceAnalyzer(detector, embedder)


def build_generator(settings: Settings) -> Generator:
    assert settings.model_dir is not None
    return DiffusersTextToImage(settings.model_dir, device=settings.device)


def build_pipeline(gate: Gate) -> Pipeline:
    """The stage list, in the order of the design: each stage keyed by its configured name."""
    s = gate.settings
    keys_dir = s.keys_dir
    assert keys_dir is not None
    threshold = s.match_threshold
    return Pipeline(
        [
            ("consent", stages.ConsentStage(gate.subjects, s.deny_terms)),
            (
                "verify_refs",
                stages.ReferenceFacesStage(
                    gate.analyzer, gate.index, threshold, s.unknown_faces is UnknownFaces.allow
                ),
            ),
            ("generate", stages.GenerateStage(gate.generator)),
            (
                "verify_output",
                stages.OutputFacesStage(gate.analyzer, gate.index, threshold, s.require_output_face),
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


class Models:
    """Loads the analyzer and the generator once, on first use; injected ones are used as is."""

    def __init__(
        self, settings: Settings, *, analyzer: FaceAnalyzer | None = None, generator: Generator | None = None
    ) -> None:
        self.settings = settings
        self._analyzer = analyzer
        self._generator = generator
        self._injected_generator = generator is not None
        self._lock = threading.Lock()

    def analyzer(self) -> FaceAnalyzer:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = build_analyzer(self.settings)
            return self._analyzer

    def generator(self) -> Generator:
        with self._lock:
            if self._generator is None:
                self._generator = build_generator(self.settings)
            return self._generator

    def close(self) -> None:
        # Close only what this holder built: an injected generator belongs to whoever made it.
        if self._generator is not None and not self._injected_generator:
            self._generator.close()


def quiet_libraries() -> None:
    """diffusers and transformers draw progress bars on every load; a server log wants none."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


async def open_gate(
    settings: Settings, *, analyzer: FaceAnalyzer | None = None, generator: Generator | None = None
) -> Gate:
    """Open the database (migrating it) and assemble the gate; models load on first use."""
    db = Database(settings.database_url)
    await db.migrate()
    return Gate(settings, db, Models(settings, analyzer=analyzer, generator=generator), build_pipeline)
