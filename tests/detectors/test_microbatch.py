"""Micro-batching of concurrent face analysis: each caller gets exactly its own results, calls
that arrive within the window share one inner batch, and one caller's failure stays its own."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from consentry.detectors.analyzer import AnalyzedImage
from consentry.detectors.microbatch import MicroBatchingAnalyzer
from consentry.gateway.testing import FingerprintAnalyzer, synthetic_photo


class Counting(FingerprintAnalyzer):
    """Records the size of every inner call; raises for images registered as poison."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.poison: set[int] = set()
        self.guard = threading.Lock()

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        with self.guard:
            self.sizes.append(len(images))
        if any(id(image) in self.poison for image in images):
            raise RuntimeError("a chip the embedder cannot use")
        return super().analyze(images)


def people(inner: Counting, n: int) -> list[tuple[str, Image.Image]]:
    return [(f"p{i}", inner.register(synthetic_photo(i), f"p{i}")) for i in range(n)]


def test_concurrent_calls_share_one_batch_and_each_gets_its_own_faces() -> None:
    inner = Counting()
    shown = people(inner, 6)
    batcher = MicroBatchingAnalyzer(inner, window_s=0.2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda p: batcher.analyze([p[1], p[1]]), shown))
    assert sum(inner.sizes) == 12 and len(inner.sizes) < 6  # fewer inner calls than callers
    for (_, image), result in zip(shown, results, strict=True):
        alone = FingerprintAnalyzer.analyze(inner, [image, image])
        assert len(result) == 2
        for got, want in zip(result, alone, strict=True):
            assert np.array_equal(got.embeddings, want.embeddings)


def test_batches_are_bounded_by_max_images() -> None:
    inner = Counting()
    shown = people(inner, 8)
    batcher = MicroBatchingAnalyzer(inner, window_s=0.2, max_images=4)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: batcher.analyze([p[1], p[1]]), shown))
    assert max(inner.sizes) <= 4 and sum(inner.sizes) == 16 and len(results) == 8


def test_a_failing_call_fails_alone() -> None:
    inner = Counting()
    shown = people(inner, 4)
    bad = synthetic_photo(99)
    inner.poison.add(id(bad))
    batcher = MicroBatchingAnalyzer(inner, window_s=0.2)
    calls = [[image] for _, image in shown] + [[bad]]

    def run(images: list[Image.Image]) -> object:
        try:
            return batcher.analyze(images)
        except RuntimeError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=5) as pool:
        outcomes = list(pool.map(run, calls))
    assert isinstance(outcomes[-1], RuntimeError)
    assert all(isinstance(o, list) and len(o) == 1 and len(o[0].faces) == 1 for o in outcomes[:-1])


def test_window_zero_is_a_plain_pass_through() -> None:
    inner = Counting()
    ((_, image),) = people(inner, 1)
    batcher = MicroBatchingAnalyzer(inner, window_s=0.0)
    assert len(batcher.analyze([image])[0].faces) == 1 and inner.sizes == [1]
    with pytest.raises(ValueError):
        MicroBatchingAnalyzer(inner, window_s=-1)
