"""Tagging images: one code path for the Python API, the CLI and (later) the service.

``Tagger`` combines a backbone with any classifier (zero-shot or a trained method) and turns image
paths into ``Prediction`` rows: the top label, its probability, the full distribution, and the
distributions of coarser levels (e.g. Mikels' 8 → polarity). Undecodable files become rows with an
``error`` and no label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch

from emoclip.encoder.backbone import Backbone
from emoclip.encoder.cache import FeatureCache, iter_features
from emoclip.encoder.decode import DEFAULT_MAX_PIXELS, ImageBytes, ImageSource, as_source
from emoclip.encoder.pipeline import DEFAULT_BATCH_SIZE, image_batch_size
from emoclip.labels.distribution import LevelProbabilities, coarsen, softmax
from emoclip.labels.taxonomy import Taxonomy
from emoclip.tagging.rows import Prediction

__all__ = ["Classifier", "Prediction", "Tagger", "TextGeneratingClassifier"]


class Classifier(Protocol):
    """What tagging needs from a method: a taxonomy and logits for normalised image features."""

    taxonomy: Taxonomy

    def logits(self, image_features: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict:
        """The method and its options, as recorded in run folders and shard manifests."""
        ...


class TextGeneratingClassifier(Classifier, Protocol):
    """A classifier that also writes a sentence per image (``generates_text`` true, e.g. ugrie)."""

    generates_text: bool

    def logits_and_texts(self, image_features: torch.Tensor) -> tuple[torch.Tensor, list[str]]: ...


class Tagger:
    """Tags image files with emotions using ``classifier`` on ``backbone`` features."""

    def __init__(self, backbone: Backbone, classifier: Classifier, top_k: int = 3,
                 coarse_levels: Sequence[str] | None = None, batch_size: int | None = DEFAULT_BATCH_SIZE,
                 workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 cache: FeatureCache | None = None, multi: float | None = None) -> None:
        self.backbone = backbone
        self.classifier = classifier
        self.top_k = max(1, top_k)
        taxonomy = classifier.taxonomy
        levels = [t.name for t in taxonomy.ancestors()] if coarse_levels is None else list(coarse_levels)
        for name in levels:
            taxonomy.find_ancestor(name)  # fail early on a level the taxonomy does not map into
        self.coarse_levels = levels
        self.batch_size = image_batch_size(backbone, batch_size)
        self.workers = workers
        self.max_pixels = max_pixels
        self.cache = cache  # decoding and precision come from backbone.spec, which also keys the cache
        self.multi = multi

    @property
    def taxonomy(self) -> Taxonomy:
        return self.classifier.taxonomy

    @property
    def generates_text(self) -> bool:
        """Rows carry ``generated`` (classifiers with ``logits_and_texts`` that say so, e.g. ugrie)."""
        return bool(getattr(self.classifier, "generates_text", False))

    def predict_features(self, features: torch.Tensor, paths: Sequence[str]) -> list[Prediction]:
        """Predictions for already-encoded, normalised image features."""
        texts: list[str | None] = [None] * len(paths)
        if self.generates_text:  # one pass gives the scores and the sentence
            generator = cast(TextGeneratingClassifier, self.classifier)
            logits, generated = generator.logits_and_texts(features)
            texts = list(generated)
        else:
            logits = self.classifier.logits(features)
        fine = LevelProbabilities(self.taxonomy, softmax(logits))
        coarse = {name: coarsen(fine, name) for name in self.coarse_levels}
        rows = []
        for i, path in enumerate(paths):
            top = fine.top_k(i, self.top_k)
            rows.append(Prediction(path=path, label=top[0][0], probability=top[0][1], top_k=top,
                                   distribution=fine.as_dict(i),
                                   levels={name: lvl.as_dict(i) for name, lvl in coarse.items()},
                                   multi=None if self.multi is None else fine.at_least(i, self.multi),
                                   generated=texts[i]))
        return rows

    def tag_paths(self, inputs: str | Path | Iterable[str | Path], files_from: str | None = None,
                  progress: Callable[[int], None] | None = None) -> Iterator[Prediction]:
        """Rows for what a user points at — files, folders (searched recursively), globs, WebDataset tar
        shards ('shards/{00000..00009}.tar') or a list of these — in the order ``emoclip predict`` uses.
        The inputs are collected now (a missing file is refused here); rows come as they are tagged."""
        from emoclip.tagging.inputs import collect_inputs, iter_tagged

        given = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        items = collect_inputs([str(p) for p in given], files_from).items
        return iter_tagged(self, items, progress=progress)

    def tag(self, paths: Iterable[str | Path | ImageBytes], progress: Callable[[int], None] | None = None,
            features: bool = False) -> Iterator[Prediction]:
        """Yield one ``Prediction`` per path (or in-memory ``ImageBytes``), in input order (features from
        the cache where present). A row's ``path`` is the file path, or the ImageBytes' name; with
        ``features`` it also carries the image's CLIP feature (for search indexes)."""
        items = [as_source(p) for p in paths]
        pending: list[tuple[int, np.ndarray | None, str | None]] = []
        stream = iter_features(self.backbone, items, self.cache, self.batch_size, self.workers, self.max_pixels,
                               progress)
        for entry in stream:
            pending.append(entry)
            if len(pending) >= self.batch_size:
                yield from self._classify(items, pending, features)
                pending = []
        yield from self._classify(items, pending, features)

    def _classify(self, items: list[ImageSource], entries: list[tuple[int, np.ndarray | None, str | None]],
                  keep_features: bool = False) -> Iterator[Prediction]:
        good = [(i, f) for i, f, _ in entries if f is not None]
        rows = iter(self.predict_features(torch.from_numpy(np.stack([f for _, f in good])),
                                          [str(items[i]) for i, _ in good]) if good else [])
        for i, feature, error in entries:
            if feature is None:
                yield Prediction(path=str(items[i]), error=error, multi=None if self.multi is None else [])
                continue
            row = next(rows)
            if keep_features:
                row.feature = feature
            yield row
