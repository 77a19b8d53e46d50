"""Exact cosine search over enrolled templates, on the embedder's device.

Templates are L2-normalised, so cosine similarity is a matrix product. For each query face the
index reports, per enrolled identity, the best similarity over that identity's templates; the
verification rules then only look at the subject's score and the best other identity.

On CPU the templates are kept sorted by identity, so the per-identity maximum is one
``np.maximum.reduceat`` over contiguous runs; on CUDA a ``scatter_reduce`` does the same on the
device. Both are exact (no approximate search): a consent decision must not depend on recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class IdentityScores:
    """Per query face: the best similarity to each enrolled identity."""

    identities: tuple[str, ...]
    scores: np.ndarray  # (n_queries, n_identities) float32
    columns: Mapping[str, int] = field(default_factory=dict)

    def _column(self, identity: str) -> int | None:
        if self.columns:
            return self.columns.get(identity)
        return self.identities.index(identity) if identity in self.identities else None

    def best(self, row: int, exclude: str | None = None) -> tuple[str | None, float]:
        """The best-matching identity for query ``row`` (optionally ignoring one) and its score."""
        values = self.scores[row]
        skip = self._column(exclude) if exclude is not None else None
        if skip is not None:
            values = values.copy()
            values[skip] = -np.inf
        if values.size == 0:
            return None, -1.0
        col = int(np.argmax(values))
        score = float(values[col])
        return (self.identities[col], score) if score > -1.0 else (None, -1.0)

    def of(self, row: int, identity: str) -> float:
        """The similarity of query ``row`` to ``identity`` (-1 when it is not enrolled)."""
        col = self._column(identity)
        return -1.0 if col is None else float(self.scores[row, col])


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class IdentityIndex:
    """Immutable index; rebuild it when templates change (enrollment, erasure)."""

    def __init__(self, identity_ids: Sequence[str], templates: np.ndarray, device: str = "cpu") -> None:
        if len(identity_ids) != len(templates):
            raise ValueError("one identity id per template row is required")
        self.device = torch.device(device)
        self.identities: tuple[str, ...] = tuple(dict.fromkeys(identity_ids))
        self.columns = {identity: i for i, identity in enumerate(self.identities)}
        owner = np.array([self.columns[i] for i in identity_ids], dtype=np.int64)
        matrix = normalise(templates) if len(templates) else np.zeros((0, 1), np.float32)
        self._n = len(owner)
        if self.device.type == "cpu":
            order = np.argsort(owner, kind="stable")
            self._cpu = np.ascontiguousarray(matrix[order])
            self._starts = np.searchsorted(owner[order], np.arange(len(self.identities)))
        else:
            self._owner = torch.from_numpy(owner).to(self.device)
            self._templates = torch.from_numpy(matrix).to(self.device)

    def __len__(self) -> int:
        return self._n

    def scores(self, queries: np.ndarray) -> IdentityScores:
        n = len(queries)
        if n == 0 or self._n == 0:
            empty = np.full((n, len(self.identities)), -1.0, np.float32)
            return IdentityScores(self.identities, empty, self.columns)
        q = normalise(queries)
        if self.device.type == "cpu":
            per_identity = np.maximum.reduceat(q @ self._cpu.T, self._starts, axis=1)
        else:
            per_identity = self._scores_on_device(q)
        return IdentityScores(self.identities, per_identity.astype(np.float32), self.columns)

    @torch.inference_mode()
    def _scores_on_device(self, q: np.ndarray) -> np.ndarray:
        sims = torch.from_numpy(q).to(self.device) @ self._templates.T
        out = torch.full((len(q), len(self.identities)), -1.0, device=self.device)
        out.scatter_reduce_(1, self._owner.expand(len(q), -1), sims, reduce="amax", include_self=True)
        return out.cpu().numpy()
