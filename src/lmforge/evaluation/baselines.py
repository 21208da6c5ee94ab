"""Cheap baselines that every model is reported beside: the majority class and TF-IDF + LogReg."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.evaluation.metrics import encode_labels
from lmforge.models.tfidf import TfidfLogReg


def majority_baseline(
    train_labels: Sequence[str], test_size: int, labels: list[str]
) -> tuple[list[str], np.ndarray]:
    """Predict the most frequent training label everywhere; probabilities are the train prior."""
    if len(train_labels) == 0:
        raise LmforgeError("the majority baseline needs at least one training label")
    counts = np.bincount(encode_labels(train_labels, labels, "train labels"), minlength=len(labels))
    prior = counts / counts.sum()
    # argmax breaks ties by the first label in `labels` order, so the result is deterministic.
    majority = labels[int(np.argmax(counts))]
    return [majority] * test_size, np.tile(prior, (test_size, 1))


def tfidf_logreg_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    labels: list[str],
    seed: int = 0,
) -> tuple[list[str], np.ndarray]:
    """Logistic regression on TF-IDF of character 1-3-grams; probabilities in `labels` order."""
    if len(train_texts) != len(train_labels):
        raise LmforgeError(f"{len(train_texts)} training texts but {len(train_labels)} labels")
    y = encode_labels(train_labels, labels, "train labels")
    present = np.unique(y)
    if len(present) < 2:
        # Logistic regression cannot fit one class; the only honest answer is the majority one.
        return majority_baseline(train_labels, len(test_texts), labels)
    model = TfidfLogReg.fit(train_texts, y, len(labels), seed)
    probs = model.probabilities(test_texts)
    predictions = [labels[i] for i in probs.argmax(axis=1)]
    return predictions, probs
