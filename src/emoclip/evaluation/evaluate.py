"""Scoring a classifier on a dataset split: the benchmark protocol in one function.

Predictions are made at the classifier's taxonomy and compared with the dataset's labels at a
common level: the same taxonomy, or a coarser one reached through parent maps (a Mikels-8 model
scored on positive/negative labels, EmotionROI-6 labels scored against a polarity model).
``also`` adds coarser levels (e.g. polarity); vote distributions, where the data has them, add
label-distribution metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emoclip.core.errors import NothingReadableError, TaxonomyError
from emoclip.core.files import name_text
from emoclip.datasets.dataset import Dataset
from emoclip.encoder.backbone import Backbone
from emoclip.encoder.cache import FeatureCache, compute_features
from emoclip.evaluation.metrics import classification_metrics, distribution_metrics
from emoclip.labels.distribution import softmax
from emoclip.labels.taxonomy import Taxonomy
from emoclip.tagging.tagger import Classifier


@dataclass
class Evaluation:
    """Everything a report needs: metrics plus per-image predictions at the evaluation level."""

    metrics: dict
    paths: list[str]
    true: np.ndarray           # at the evaluation level
    pred: np.ndarray           # at the evaluation level
    probs: np.ndarray          # at the evaluation level, N × C
    level: Taxonomy
    failed: dict[str, str]


def _to_level(taxonomy: Taxonomy, level: str) -> np.ndarray:
    """Index map from ``taxonomy`` to ``level`` (identity when they are the same)."""
    return np.arange(len(taxonomy)) if taxonomy.name == level else taxonomy.mapping_to(level)


def common_level(model_tax: Taxonomy, label_tax: Taxonomy) -> Taxonomy:
    """The finest taxonomy both the predictions and the labels map into."""
    model_chain = [model_tax, *model_tax.ancestors()]
    label_names = {t.name for t in [label_tax, *label_tax.ancestors()]}
    for candidate in model_chain:
        if candidate.name in label_names:
            return candidate
    raise TaxonomyError(f"predictions in '{model_tax.name}' and labels in '{label_tax.name}' share no level; "
                        "use a --label-taxonomy that maps into the model's (or --via prompts for zero-shot)")


def _aggregate(probs: np.ndarray, mapping: np.ndarray, n_out: int) -> np.ndarray:
    out = np.zeros((probs.shape[0], n_out), dtype=probs.dtype)
    for i, j in enumerate(mapping):
        out[:, j] += probs[:, i]
    return out


def votes_over(dataset: Dataset, taxonomy: Taxonomy) -> np.ndarray | None:
    """The dataset's vote distributions over ``taxonomy``'s classes, or None when they do not fit it.

    Vote columns resolve through the taxonomy (names, aliases, synonyms: Abstract's 'Content' is
    Mikels' contentment); votes whose columns are another taxonomy's classes give no distribution
    metrics (the classification metrics stand).
    """
    if dataset.votes is None:
        return None
    try:
        columns = [taxonomy.index(name) for name in dataset.vote_classes]
    except TaxonomyError:
        return None
    if sorted(set(columns)) != list(range(len(taxonomy))):
        return None
    out = np.zeros((len(dataset), len(taxonomy)))
    for j, cls in enumerate(columns):
        out[:, cls] += dataset.votes[:, j]
    return out


def evaluate(backbone: Backbone, classifier: Classifier, dataset: Dataset, label_taxonomy: Taxonomy | None = None,
             also: Sequence[str] = (), cache: FeatureCache | None = None, batch_size: int | None = None,
             workers: int | None = None) -> Evaluation:
    """Encode (or fetch) features, predict, and compute every metric at the common level."""
    started = time.perf_counter()
    model_tax = classifier.taxonomy
    label_tax = label_taxonomy or model_tax
    labels = dataset.label_indices(label_tax)  # fails early on an unknown label
    level = common_level(model_tax, label_tax)
    table = compute_features(backbone, dataset.paths, cache, batch_size=batch_size, workers=workers)
    encode_seconds = time.perf_counter() - started
    ok = table.ok
    if len(ok) and not ok.any():
        first = min(table.errors)
        raise NothingReadableError(f"none of the {len(ok)} images of {dataset.name} could be read (first: "
                                   f"{name_text(str(table.paths[first]))}: {table.errors[first]}); nothing to score")
    with torch.no_grad():
        fine_probs = softmax(classifier.logits(torch.from_numpy(table.features[ok])))
    level_probs = _aggregate(fine_probs, _to_level(model_tax, level.name), len(level))
    true = _to_level(label_tax, level.name)[labels[ok]]
    pred = level_probs.argmax(1)
    metrics: dict = {
        "level": level.name, "model_taxonomy": model_tax.name, "label_taxonomy": label_tax.name,
        **classification_metrics(true, pred, level.names),
    }
    coarse = {}
    for name in also:
        if name == level.name:
            continue
        coarse_level = level.find_ancestor(name)
        mapping = _to_level(level, name)
        coarse[name] = classification_metrics(mapping[true], _aggregate(level_probs, mapping, len(coarse_level))
                                              .argmax(1), coarse_level.names)
    distribution = None
    votes = votes_over(dataset, model_tax)
    if votes is not None:
        distribution = {**distribution_metrics(votes[ok], fine_probs), "note": dataset.vote_note}
    failed = {str(table.paths[i]): reason for i, reason in table.errors.items()}
    metrics.update({
        "coarse": coarse, "distribution": distribution,
        "n_failed": len(failed),
        "cache": {"hits": table.hits, "misses": table.misses},
        "seconds": {"features": round(encode_seconds, 3), "total": round(time.perf_counter() - started, 3)},
    })
    paths = [str(p) for p, good in zip(table.paths, ok, strict=True) if good]
    return Evaluation(metrics, paths, true, pred, level_probs, level, failed)
