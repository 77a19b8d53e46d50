"""Exact cosine search over enrolled templates, on the embedder's device.

Templates are L2-normalised, so cosine similarity is a matrix product. For each query face the
index reports, per enrolled identity, the best similarity over that identity's templates; the
verification rules then only look at the subject's score and the best other identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class IdentityScores:
    """Per query face: the best similarity to each enrolled identity."""

    identities: tuple[str, ...]
    scores: np.ndarray  # (n_queries, n_identities) float32

    def best(self, row: int, exclude: str | None = None) -> tuple[str | None, float]:
        """The best-matching identity for query ``row`` (optionally ignoring one) and its score."""
        best_id, best = None, -1.0
        for col, identity in enumerate(self.identities):
            if identity != exclude and self.scores[row, col] > best:
                best_id, best = identity, float(self.scores[row, col])
        return best_id, best

    def of(self, row: int, identity: str) -> float:
        """The similarity of query ``row`` to ``identity`` (-1 when it is not enrolled)."""
        try:
            return float(self.scores[row, self.identities.index(identity)])
        except ValueError:
            return -1.0


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
        column = {identity: i for i, identity in enumerate(self.identities)}
        self._owner = torch.tensor([column[i] for i in identity_ids], dtype=torch.long, device=self.device)
        matrix = normalise(templates) if len(templates) else np.zeros((0, 1), np.float32)
        self._templates = torch.from_numpy(matrix).to(self.device)

    def __len__(self) -> int:
        return int(self._templates.shape[0])

    @torch.inference_mode()
    def scores(self, queries: np.ndarray) -> IdentityScores:
        n = len(queries)
        if n == 0 or len(self) == 0:
            return IdentityScores(self.identities, np.full((n, len(self.identities)), -1.0, np.float32))
        q = torch.from_numpy(normalise(queries)).to(self.device)
        sims = q @ self._templates.T  # (n, templates)
        per_identity = torch.full((n, len(self.identities)), -1.0, device=self.device)
        per_identity.scatter_reduce_(1, self._owner.expand(n, -1), sims, reduce="amax", include_self=True)
        return IdentityScores(self.identities, per_identity.cpu().numpy())
