"""Micro-batching of face analysis across concurrent requests.

Each request already sends all of its images (references, or every output) through the detector
and embedder in one call. Under load, several requests reach a face stage at about the same
time; :class:`MicroBatchingAnalyzer` lets the first caller wait a short, bounded window, takes
every call that arrived meanwhile (up to ``max_images`` images), runs them as one batch and hands
each caller its own slice. If the combined batch fails, each call is run again on its own, so one
request's bad image never fails another request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from consentry.detectors.analyzer import AnalyzedImage, Analyzer
from consentry.detectors.embedders import Embedder


@dataclass
class _Call:
    images: Sequence[Image.Image]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: list[AnalyzedImage] | None = None
    error: BaseException | None = None


class MicroBatchingAnalyzer:
    """An :class:`Analyzer` over ``inner`` that batches calls arriving within ``window_s``."""

    def __init__(self, inner: Analyzer, window_s: float, *, max_images: int = 64) -> None:
        if window_s < 0 or max_images < 1:
            raise ValueError("window_s must be >= 0 and max_images >= 1")
        self.inner, self.window_s, self.max_images = inner, window_s, max_images
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._leader_active = False
        self.batches = 0
        """How many inner calls were made (for tests and benchmarks)."""

    @property
    def embedder(self) -> Embedder:
        return self.inner.embedder

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        if self.window_s == 0 or len(images) >= self.max_images:
            return self._run_alone(images)
        call = _Call(images)
        with self._lock:
            self._queue.append(call)
            if not self._leader_active:
                self._leader_active = call.lead = True
        if not call.lead:
            call.done.wait()  # set when its result is in, or when it is made the next leader
        if call.lead and call.result is None and call.error is None:
            self._lead()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _run_alone(self, images: Sequence[Image.Image]) -> list[AnalyzedImage]:
        with self._lock:
            self.batches += 1
        return self.inner.analyze(images)

    def _lead(self) -> None:
        """Collect for the window, take what fits, run it, and pass leadership on if calls remain."""
        time.sleep(self.window_s)
        with self._lock:
            batch: list[_Call] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].images) <= self.max_images):
                call = self._queue.pop(0)
                batch.append(call)
                size += len(call.images)
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()  # wakes it as the next leader (it has no result yet)
            else:
                self._leader_active = False
        self._run(batch)

    def _run(self, batch: list[_Call]) -> None:
        flat = [image for call in batch for image in call.images]
        try:
            results = self._run_alone(flat)
        except BaseException:
            # Run each call on its own: the error belongs to the request that caused it.
            for call in batch:
                try:
                    call.result = self._run_alone(call.images)
                except BaseException as exc:
                    call.error = exc
                call.done.set()
            return
        start = 0
        for call in batch:
            call.result = results[start : start + len(call.images)]
            start += len(call.images)
            call.done.set()
