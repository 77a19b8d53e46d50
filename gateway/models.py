"""Lazy holders for the gate's models: each builds its model once, on first use or at warm-up.

They implement the same Protocols as the models they hold (:class:`Analyzer`, :class:`Generator`),
so stages take them like any other implementation. Commands that never touch a model (``grant``,
``audit verify``) therefore never load one, and the HTTP lifespan loads both before the first
request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from PIL import Image

from consentry.generation.base import (
    GenerationJob,
    GenerationOutput,
    Generator,
    GeneratorCapabilities,
    capabilities_of,
)

if TYPE_CHECKING:
    from consentry.detectors.analyzer import AnalyzedImage, Analyzer  # noqa: F401 (the base class names it as a string)
    from consentry.detectors.embedders import Embedder
    from consentry.generation.lora_training import LoraTrainingConfig, TrainedAdapter
    from consentry.policies.prompt_rules import CategoryMatch, SemanticRule  # noqa: F401 (as above)

M = TypeVar("M")


class Loadable(Protocol):
    """A model holder the gate can warm up, ask about, and release."""

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None:
        """Load the model now (blocking)."""
        ...

    def close(self) -> None: ...


class _Lazy(Generic[M]):
    def __init__(self, build: Callable[[], M]) -> None:
        self._build = build
        self._model: M | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> M:
        with self._lock:
            if self._model is None:
                self._model = self._build()
            return self._model

    def load(self) -> None:
        self.model  # noqa: B018 - building is the point

    @property
    def loaded(self) -> bool:
        return self._model is not None


class LazyAnalyzer(_Lazy["Analyzer"]):
    @property
    def embedder(self) -> Embedder:
        return self.model.embedder

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        return self.model.analyze(images)

    def close(self) -> None:
        """Face models hold no resources beyond memory."""


class LazyGenerator(_Lazy[Generator]):
    def __init__(self, build: Callable[[], Generator], *, name: str, owned: bool = True) -> None:
        super().__init__(build)
        self._name = name
        self._owned = owned

    @property
    def name(self) -> str:
        return self.model.name if self.loaded else self._name

    @property
    def untrained(self) -> bool:
        return self.model.untrained

    @property
    def capabilities(self) -> GeneratorCapabilities:
        return capabilities_of(self.model)

    def generate(self, job: GenerationJob) -> GenerationOutput:
        return self.model.generate(job)

    def train_adapter(
        self,
        photos: Sequence[Image.Image],
        config: LoraTrainingConfig,
        *,
        progress: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter:
        """Train with the held model (only called when its capabilities say it trains)."""
        trainer: Any = self.model
        result: TrainedAdapter = trainer.train_adapter(
            photos, config, progress=progress, should_stop=should_stop
        )
        return result

    def close(self) -> None:
        # Close only what this holder built: an injected generator belongs to whoever made it.
        if self._model is not None and self._owned:
            self._model.close()


class LazyPromptRule(_Lazy["SemanticRule"]):
    """The policy's deny categories by meaning: the embedding model loads and the categories'
    examples are embedded once, at warm-up or on the first prompt that reaches the rule."""

    def check(self, prompt: str) -> CategoryMatch | None:
        return self.model.check(prompt)

    def close(self) -> None:
        """The embedding model holds no resources beyond memory (and is shared per process)."""
