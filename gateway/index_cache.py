"""Keeps the identity index in memory and rebuilds it when the template table changes.

Each lookup asks the database for a cheap fingerprint (count and highest id of active templates),
so an enrollment or erasure made by another gateway process is seen by the next request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from consentry.gateway.storage.subjects import Subjects

if TYPE_CHECKING:
    from consentry.detectors.analyzer import Analyzer
    from consentry.detectors.index import IdentityIndex


class IndexCache:
    def __init__(self, subjects: Subjects, analyzer: Analyzer) -> None:
        # The analyzer is asked for its embedder only on first use, so opening a gate for a
        # command that never matches faces loads no model.
        self.subjects = subjects
        self.analyzer = analyzer
        self._index: IdentityIndex | None = None
        self._version: tuple[int, int] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> IdentityIndex:
        from consentry.detectors.index import IdentityIndex

        embedder = self.analyzer.embedder
        version = await self.subjects.templates_version(embedder.name)
        async with self._lock:
            if self._index is None or version != self._version:
                enrolled = await self.subjects.templates(embedder.name)
                device = str(getattr(embedder, "device", "cpu"))
                # Building moves the matrix onto the device: model work, off the event loop.
                self._index = await asyncio.to_thread(
                    IdentityIndex, enrolled.identity_ids, enrolled.matrix, device
                )
                self._version = version
            return self._index
