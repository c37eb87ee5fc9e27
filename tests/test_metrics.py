"""Metrics against values computed by hand on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emoclip.evaluation.metrics import classification_metrics, distribution_metrics


def test_classification_metrics_by_hand():
    # true: a a a b b c ; pred: a a b b c c
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(true, pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls 2/3, 1/2, 1 ; precisions 1, 1/2, 1/2
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})


def test_absent_class_is_left_out_of_balanced_accuracy_but_not_macro_f1():
    m = classification_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b"])
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["b"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 0) / 2)


def test_distribution_metrics_by_hand():
    votes = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])  # second row: no votes → excluded
    pred = np.array([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]])
    d = distribution_metrics(votes, pred)
    assert d["n"] == 1 and d["n_excluded_without_votes"] == 1
    assert d["kl_divergence"] == pytest.approx(math.log(2), rel=1e-6)
    assert d["chebyshev"] == pytest.approx(0.5)
    assert d["intersection"] == pytest.approx(0.5)
    assert d["cosine"] == pytest.approx(0.25 / (math.sqrt(0.5) * math.sqrt(0.375)))


def test_identical_distributions_are_perfect():
    p = np.array([[0.1, 0.2, 0.7]])
    d = distribution_metrics(p, p)
    assert d["kl_divergence"] == pytest.approx(0, abs=1e-9)
    assert d["chebyshev"] == 0 and d["cosine"] == pytest.approx(1) and d["intersection"] == pytest.approx(1)
