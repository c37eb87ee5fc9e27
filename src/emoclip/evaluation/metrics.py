"""Classification and label-distribution metrics, computed from first principles with numpy.

Classification: accuracy, balanced accuracy (mean per-class recall over classes present in the
ground truth), macro-F1 (over all classes of the taxonomy), per-class precision/recall/F1/support
and the confusion matrix (rows: true class, columns: predicted class).

Label distribution (where the data has votes): KL divergence KL(votes ‖ predicted) with a small
epsilon, Chebyshev distance (max absolute difference), cosine similarity and intersection
(sum of element-wise minima). Rows whose votes are all zero (e.g. all-'neutral' images) are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KL_EPSILON = 1e-8


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_metrics(true: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class figures and the confusion matrix."""
    n = len(class_names)
    matrix = confusion_matrix(np.asarray(true), np.asarray(pred), n)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(1).astype(np.float64)
    predicted = matrix.sum(0).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = support > 0
    return {
        "n": int(matrix.sum()),
        "accuracy": float(tp.sum() / max(matrix.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "classes": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }


def distribution_metrics(votes: np.ndarray, predicted: np.ndarray) -> dict:
    """Mean KL, Chebyshev, cosine and intersection between vote and predicted distributions."""
    keep = votes.sum(1) > 0
    p, q = votes[keep].astype(np.float64), predicted[keep].astype(np.float64)
    p = p / p.sum(1, keepdims=True)
    q = q / q.sum(1, keepdims=True)
    kl = np.sum(np.where(p > 0, p * np.log((p + KL_EPSILON) / (q + KL_EPSILON)), 0.0), axis=1)
    cosine = np.sum(p * q, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))
    return {
        "n": int(keep.sum()),
        "n_excluded_without_votes": int((~keep).sum()),
        "kl_divergence": float(kl.mean()),
        "chebyshev": float(np.abs(p - q).max(1).mean()),
        "cosine": float(cosine.mean()),
        "intersection": float(np.minimum(p, q).sum(1).mean()),
    }
