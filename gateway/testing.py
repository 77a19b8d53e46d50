"""Fakes for testing the gate's flow without face or diffusion models.

Each is a real implementation of the Protocol it stands in for (like httpx's ``MockTransport``):
the Gate, the flow, storage, watermarking and signing around them run for real. Nothing here is
monkeypatching.

- :class:`FingerprintAnalyzer` knows which people each image shows by the image's pixel
  fingerprint, and embeds each person as a fixed unit vector, so enrollment, the identity index
  and the face rules work exactly as with real models.
- :class:`PhotoGenerator` "draws" a given photo: register it with the analyzer and the output
  check sees that person in the output.
- :class:`FingerprintClassifier` scores images for explicit content by fingerprint: mark a
  photo explicit and the content check sees it so (no explicit picture is needed to test the
  rules).
- :class:`WordsEmbedder` embeds a text as its bag of words, so the prompt rules by meaning
  refuse a prompt that shares most words with a category's example (no model needed).
- :class:`FailingGenerator`, :class:`FailingCheck` and :class:`FailingClassifier` fail (raise, or
  hang past the stage budget) so fail-closed behaviour can be shown for any step.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from consentry.detectors.analyzer import AnalyzedImage
from consentry.detectors.detection import DetectedFace
from consentry.gateway.flow import GateJob
from consentry.generation.base import GenerationJob, GenerationMode, GenerationOutput, GeneratorCapabilities
from consentry.generation.lora_training import LoraTrainingConfig, TrainedAdapter
from consentry.policies import codes
from consentry.policies.decision import Verdict
from consentry.policies.errors import StageError

FAKE_DIM = 128


def fingerprint(image: Image.Image) -> str:
    """Identifies an image by its decoded pixels, so the same picture is recognised whether it
    arrives as PNG bytes or as a PIL image."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def person_vector(person: str) -> np.ndarray:
    """A fixed unit vector per person. Random 128-d directions are near-orthogonal (|cos| well
    under 0.5), so two fake people never match at any realistic threshold."""
    seed = int.from_bytes(hashlib.sha256(person.encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(FAKE_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def synthetic_photo(seed: int, size: int = 256) -> Image.Image:
    """A distinct, deterministic, photo-like RGB image (smooth colour fields, not pixel noise,
    which JPEG would flatten and the watermark could not live in): something to register as a
    person's photo."""
    coarse = np.random.default_rng(seed).integers(40, 216, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)


@dataclass(frozen=True, slots=True)
class FakeEmbedder:
    """Describes the fake embedding space (the index keys templates by embedder name)."""

    name: str = "fake-fingerprint"
    dim: int = FAKE_DIM
    chip_size: int = 150
    chip_padding: float = 0.25
    device: str = "cpu"

    def embed(self, chips: np.ndarray) -> np.ndarray:
        raise NotImplementedError("the fingerprint analyzer embeds whole images, not chips")


def _face(index: int, size: int) -> DetectedFace:
    """A face box that passes the enrollment size rule; faces of one image do not overlap."""
    x = 10.0 + index * (size + 10)
    y = 10.0
    eyes = ((x + size * 0.3, y + size * 0.4), (x + size * 0.7, y + size * 0.4))
    nose = (x + size * 0.5, y + size * 0.6)
    mouth = ((x + size * 0.35, y + size * 0.8), (x + size * 0.65, y + size * 0.8))
    return DetectedFace(box=(x, y, x + size, y + size), probability=0.999, landmarks=(*eyes, nose, *mouth))


@dataclass
class FingerprintAnalyzer:
    """An :class:`~consentry.detectors.analyzer.Analyzer` that maps image fingerprints to the
    people they show. Unregistered images show nobody; a person registered as ``None`` is a face
    that matches no one (a stranger)."""

    face_px: int = 100
    embedder: FakeEmbedder = field(default_factory=FakeEmbedder)
    _people: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0

    def register(self, image: Image.Image, *people: str) -> Image.Image:
        """Declare that ``image`` shows ``people`` (left to right); returns the image."""
        with self._lock:
            self._people[fingerprint(image)] = tuple(people)
        return image

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        with self._lock:
            self.calls += 1
            shown = [self._people.get(fingerprint(img), ()) for img in images]
        out = []
        for people in shown:
            faces = tuple(_face(i, self.face_px) for i in range(len(people)))
            rows = [person_vector(p) for p in people]
            matrix = np.stack(rows) if rows else np.zeros((0, FAKE_DIM), dtype=np.float32)
            out.append(AnalyzedImage(faces, matrix.astype(np.float32)))
        return out


class PhotoGenerator:
    """A :class:`~consentry.generation.base.Generator` that draws ``photo`` for every image asked
    for, whatever the prompt or mode (register the photo with the analyzer to say who it shows).

    It also "trains" adapters: :meth:`train_adapter` reports progress step by step (``step_s``
    apart), stops when asked, and returns weights derived from the photos' pixels and the
    configuration, so the storage, encryption and consent around training run for real."""

    untrained = False
    capabilities = GeneratorCapabilities(modes=frozenset(GenerationMode), adapters=True)

    def __init__(
        self, photo: Image.Image, name: str = "fake-photo-generator", *, step_s: float = 0.0
    ) -> None:
        self.photo = photo.convert("RGB")
        self.name = name
        self.step_s = step_s
        self.jobs: list[GenerationJob] = []
        self.trained_on: list[tuple[str, ...]] = []

    def generate(self, job: GenerationJob) -> GenerationOutput:
        self.jobs.append(job)
        start = time.perf_counter()
        images = tuple(self.photo.copy() for _ in range(job.num_images))
        elapsed = (time.perf_counter() - start) * 1000.0
        return GenerationOutput(
            images=images,
            model=self.name,
            untrained=False,
            seed=job.seed,
            steps=job.steps,
            elapsed_ms=elapsed,
            mode=job.mode,
            adapter_id=job.adapter.id if job.adapter else None,
        )

    def train_adapter(
        self,
        photos: Sequence[Image.Image],
        config: LoraTrainingConfig,
        *,
        progress: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter:
        prints = tuple(fingerprint(p) for p in photos)
        self.trained_on.append(prints)
        start = time.perf_counter()
        for step in range(1, config.steps + 1):
            if should_stop is not None and should_stop():
                raise StageError("training was stopped", code=codes.ADAPTER_INTERRUPTED)
            time.sleep(self.step_s)
            if progress is not None:
                progress(step, config.steps, 1.0 / step)
        digest = hashlib.sha256(repr((prints, config.rank, config.steps)).encode()).digest()
        return TrainedAdapter(
            weights=b"fake-lora:" + digest,
            rank=config.rank,
            steps=config.steps,
            prior_images=config.prior_images,
            instance_prompt=config.instance_prompt,
            instance_loss=1.0 / config.steps,
            prior_loss=None if config.prior_images == 0 else 0.5,
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
            peak_memory_bytes=0,
        )

    def close(self) -> None:
        """Nothing to release."""


class FailingGenerator:
    """A generator that raises ``error`` (any exception), or blocks for ``hang_s`` seconds, as a
    model that crashes or hangs would."""

    untrained = False

    def __init__(self, error: BaseException | None = None, *, hang_s: float = 0.0) -> None:
        self.error = error
        self.hang_s = hang_s
        self.name = "failing-generator"

    def generate(self, job: GenerationJob) -> GenerationOutput:
        if self.hang_s:
            time.sleep(self.hang_s)
        raise self.error or RuntimeError("the generator crashed")

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class FingerprintClassifier:
    """A :class:`~consentry.detectors.content.ContentClassifier` that knows which images are
    explicit by their fingerprint: marked images get their marked score, others score 0."""

    name: str = "fake-fingerprint-classifier"
    _explicit: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0

    def mark(self, image: Image.Image, score: float = 1.0) -> Image.Image:
        """Declare that ``image`` scores ``score`` (default: certainly explicit); returns it."""
        with self._lock:
            self._explicit[fingerprint(image)] = score
        return image

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        """Nothing to load."""

    def explicit_scores(self, images: Sequence[Image.Image]) -> list[float]:
        with self._lock:
            self.calls += 1
            return [self._explicit.get(fingerprint(img), 0.0) for img in images]

    def close(self) -> None:
        """Nothing to release."""


class FailingClassifier:
    """A content classifier whose model raises ``error`` when it scores, as a crashing
    onnxruntime session would."""

    name = "failing-classifier"
    loaded = True

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or RuntimeError("the content classifier crashed")

    def load(self) -> None:
        """Loads fine; scoring fails."""

    def explicit_scores(self, images: Sequence[Image.Image]) -> list[float]:
        raise self.error

    def close(self) -> None:
        """Nothing to release."""


class FailingCheck:
    """A check stage (reference or output faces) that raises ``error`` or waits ``hang_s`` seconds
    and then allows: put it in a :class:`~consentry.gateway.flow.Stages` to show that the gate
    refuses when a check cannot decide."""

    def __init__(self, error: BaseException | None = None, *, hang_s: float = 0.0) -> None:
        self.error = error
        self.hang_s = hang_s

    async def check(self, job: GateJob, *_: object) -> Verdict:
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.error is not None:
            raise self.error
        return Verdict.allow("slow check finished")


class WordsEmbedder:
    """A :class:`~consentry.policies.prompt_rules.PromptEmbedder` whose vectors are hashed bags of
    words: the cosine similarity of two texts is their word overlap."""

    name = "words"
    dim = 512

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class ManualClock:
    """A clock that moves only when a test moves it (session idle expiry, challenge expiry):
    pass it where a component takes a ``clock`` callable."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
