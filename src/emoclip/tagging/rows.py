"""What tagging yields: one ``Prediction`` row per image, and what can make rows (``ImageTagger``).

Its own module so that the input side (``tagging.inputs``: folders, lists, tar shards) can build
error rows and drive any tagger without importing the ``Tagger`` and its torch stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass
class Prediction:
    """The result for one image; ``error`` is set (and the rest empty) when it could not be read."""

    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    distribution: dict[str, float] = field(default_factory=dict)
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    multi: list[tuple[str, float]] | None = None   # with --multi P: every label with probability >= P
    generated: str | None = None  # the sentence a generative method (ugrie) wrote; None for the others
    feature: np.ndarray | None = field(default=None, repr=False)  # the CLIP feature, when asked for

    @property
    def ok(self) -> bool:
        return self.error is None


class ImageTagger(Protocol):
    """Anything that turns images into rows in input order (``tagging.tagger.Tagger``)."""

    batch_size: int

    def tag(self, paths: Iterable[str | Path | Any], progress: Callable[[int], None] | None = None,
            features: bool = False) -> Iterator[Prediction]: ...
