"""Classification metrics on string labels, and bootstrap intervals and paired differences."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lmforge.errors import LmforgeError

# Resamples are drawn in chunks so that a large test split cannot exhaust memory:
# at most this many (resample, example) index pairs are held at once.
_MAX_INDICES_PER_CHUNK = 4_000_000


def encode_labels(values: Sequence[str], labels: list[str], what: str) -> np.ndarray:
    """Map label strings to their index in `labels`; an unknown label is an error, not a guess."""
    if len(set(labels)) != len(labels):
        raise LmforgeError(f"the label set has duplicates: {labels}")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise LmforgeError(f"{what} holds labels not in the label set {labels}: {unknown[:5]}")
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def _check_pair(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        raise LmforgeError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if len(gold) == 0:
        raise LmforgeError("cannot evaluate on zero examples")


def _roc_auc(gold_idx: np.ndarray, labels: list[str], probs: np.ndarray | None) -> float | None:
    # AUC is defined only for two classes that both occur; otherwise report None, not a guess.
    if probs is None or len(labels) != 2 or len(np.unique(gold_idx)) < 2:
        return None
    return float(roc_auc_score(gold_idx, probs[:, 1]))


def classification_metrics(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: list[str],
    probs: np.ndarray | None = None,
) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, confusion matrix and binary ROC AUC."""
    _check_pair(gold, pred)
    gold_idx = encode_labels(gold, labels, "gold")
    pred_idx = encode_labels(pred, labels, "predictions")
    if probs is not None and np.shape(probs) != (len(gold), len(labels)):
        raise LmforgeError(
            f"probabilities have shape {np.shape(probs)}, expected {(len(gold), len(labels))}"
        )
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold_idx, pred_idx, labels=ids, zero_division=0
    )
    return {
        "n": len(gold),
        "labels": list(labels),
        "accuracy": float(accuracy_score(gold_idx, pred_idx)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(gold_idx, pred_idx, labels=ids).tolist(),
        "roc_auc": _roc_auc(gold_idx, labels, None if probs is None else np.asarray(probs)),
    }


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Rows of example indices drawn with replacement, one row per resample."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_INDICES_PER_CHUNK // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _accuracy_and_f1(gold: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of each row of (resamples, n) label-index matrices."""
    b = gold.shape[0]
    accuracy = (gold == pred).mean(axis=1)
    # One bincount over (resample, gold, pred) codes gives every resample's confusion matrix.
    codes = (np.arange(b)[:, None] * k + gold) * k + pred
    cm = np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denominator = cm.sum(axis=2) + cm.sum(axis=1)  # gold count + predicted count = 2tp + fp + fn
    # Same convention as scikit-learn with zero_division=0: a class never seen nor predicted is 0.
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    return accuracy, f1.mean(axis=1)


def _percentile_interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    gold: Sequence[str], pred: Sequence[str], labels: list[str], n_resamples: int, seed: int = 0
) -> dict:
    """95% percentile bootstrap intervals of accuracy and macro-F1, resampling examples."""
    _check_pair(gold, pred)
    gold_idx = encode_labels(gold, labels, "gold")
    pred_idx = encode_labels(pred, labels, "predictions")
    accuracy, f1 = [], []
    for idx in _index_chunks(len(gold_idx), n_resamples, seed):
        acc_chunk, f1_chunk = _accuracy_and_f1(gold_idx[idx], pred_idx[idx], len(labels))
        accuracy.append(acc_chunk)
        f1.append(f1_chunk)
    return {
        "accuracy": _percentile_interval(np.concatenate(accuracy)),
        "f1_macro": _percentile_interval(np.concatenate(f1)),
    }


def paired_bootstrap_difference(
    gold: Sequence[str],
    pred_model: Sequence[str],
    pred_other: Sequence[str],
    labels: list[str],
    n_resamples: int,
    seed: int = 0,
) -> dict:
    """Model minus other on accuracy and macro-F1, both scored on the same resampled examples."""
    _check_pair(gold, pred_model)
    _check_pair(gold, pred_other)
    gold_idx = encode_labels(gold, labels, "gold")
    model_idx = encode_labels(pred_model, labels, "model predictions")
    other_idx = encode_labels(pred_other, labels, "other predictions")
    k = len(labels)
    acc_diff, f1_diff = [], []
    # Pairing removes the variance shared by both systems (which examples are hard),
    # so the interval of the difference is much tighter than two separate intervals suggest.
    for idx in _index_chunks(len(gold_idx), n_resamples, seed):
        acc_model, f1_model = _accuracy_and_f1(gold_idx[idx], model_idx[idx], k)
        acc_other, f1_other = _accuracy_and_f1(gold_idx[idx], other_idx[idx], k)
        acc_diff.append(acc_model - acc_other)
        f1_diff.append(f1_model - f1_other)
    acc_diffs, f1_diffs = np.concatenate(acc_diff), np.concatenate(f1_diff)
    model = classification_metrics(gold, pred_model, labels)
    other = classification_metrics(gold, pred_other, labels)
    return {
        "accuracy": {
            "difference": model["accuracy"] - other["accuracy"],
            "ci95": _percentile_interval(acc_diffs),
        },
        "f1_macro": {
            "difference": model["f1_macro"] - other["f1_macro"],
            "ci95": _percentile_interval(f1_diffs),
        },
        "p_model_not_better": float(np.mean(acc_diffs <= 0)),
    }
