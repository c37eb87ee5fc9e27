"""From logits to what users read: probability distributions, top-k, and coarser levels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emoclip.labels.taxonomy import Taxonomy


@dataclass(frozen=True)
class LevelProbabilities:
    """Probabilities over one taxonomy level for a batch (N × C), with the class names."""

    taxonomy: Taxonomy
    probs: np.ndarray

    def top_k(self, row: int, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs[row], kind="stable")[:k]
        return [(self.taxonomy.names[i], float(self.probs[row, i])) for i in order]

    def at_least(self, row: int, threshold: float) -> list[tuple[str, float]]:
        """Every label whose probability is >= ``threshold``, most probable first (multi-interpretation)."""
        order = np.argsort(-self.probs[row], kind="stable")
        return [(self.taxonomy.names[i], float(self.probs[row, i])) for i in order if self.probs[row, i] >= threshold]

    def as_dict(self, row: int) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.taxonomy.names, self.probs[row], strict=True)}


def softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=-1).numpy()


def coarsen(level: LevelProbabilities, coarse: Taxonomy | str) -> LevelProbabilities:
    """Probabilities of a coarser level: each coarse class gets the sum of its children."""
    matrix = level.taxonomy.aggregation_matrix(coarse)
    target = level.taxonomy.find_ancestor(coarse if isinstance(coarse, str) else coarse.name)
    return LevelProbabilities(target, level.probs @ matrix.astype(level.probs.dtype))
