"""Keeps the identity index in memory and rebuilds it when the template table changes.

Each lookup asks the database for a cheap fingerprint (count and highest id of active templates),
so an enrollment or erasure made by another gateway process is seen by the next request.
"""

from __future__ import annotations

import asyncio

from consentry.detectors.index import IdentityIndex
from consentry.gateway.storage.subjects import Subjects


class IndexCache:
    def __init__(self, subjects: Subjects, embedder_name: str, device: str) -> None:
        self.subjects = subjects
        self.embedder_name = embedder_name
        self.device = device
        self._index: IdentityIndex | None = None
        self._version: tuple[int, int] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> IdentityIndex:
        version = await self.subjects.templates_version(self.embedder_name)
        async with self._lock:
            if self._index is None or version != self._version:
                enrolled = await self.subjects.templates(self.embedder_name)
                self._index = IdentityIndex(enrolled.identity_ids, enrolled.matrix, self.device)
                self._version = version
            return self._index
