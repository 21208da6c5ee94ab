"""The baselines: majority predicts the commonest train label, TF-IDF learns easy Chinese text."""

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluation import classification_metrics, majority_baseline, tfidf_logreg_baseline

POSITIVE_WORDS = ["很好", "喜欢", "满意", "推荐"]
NEGATIVE_WORDS = ["太差", "讨厌", "失望", "退货"]
FILLER = list("这个东西我们买了的是在用")


def _reviews(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS
        filler = "".join(rng.choice(FILLER, size=6))
        texts.append(filler[:3] + str(rng.choice(words)) + filler[3:])
        labels.append(label)
    return texts, labels


def test_majority_predicts_the_most_frequent_train_label_with_the_prior():
    preds, probs = majority_baseline(["a", "b", "b", "c"], 3, ["a", "b", "c"])
    assert preds == ["b", "b", "b"]
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs, [[0.25, 0.5, 0.25]] * 3)


def test_majority_rejects_a_label_outside_the_label_set():
    with pytest.raises(LmforgeError, match="'d'"):
        majority_baseline(["a", "d"], 2, ["a", "b"])


def test_tfidf_learns_separable_chinese_reviews_and_beats_majority():
    train_texts, train_labels = _reviews(80, seed=0)
    test_texts, test_labels = _reviews(40, seed=1)
    labels = ["neg", "pos"]
    preds, probs = tfidf_logreg_baseline(train_texts, train_labels, test_texts, labels)
    tfidf = classification_metrics(test_labels, preds, labels, probs)
    majority = classification_metrics(
        test_labels, majority_baseline(train_labels, len(test_texts), labels)[0], labels
    )
    assert tfidf["accuracy"] >= 0.9
    assert tfidf["accuracy"] > majority["accuracy"]
    assert probs.shape == (40, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_tfidf_gives_zero_probability_to_a_label_absent_from_training():
    train_texts, train_labels = _reviews(40, seed=2)
    labels = ["neg", "neutral", "pos"]
    preds, probs = tfidf_logreg_baseline(train_texts, train_labels, ["很好很好", "太差"], labels)
    assert probs.shape == (2, 3)
    assert (probs[:, 1] == 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert preds == ["pos", "neg"]


def test_tfidf_with_one_training_class_falls_back_to_it():
    preds, probs = tfidf_logreg_baseline(["好", "很好"], ["pos", "pos"], ["差"], ["neg", "pos"])
    assert preds == ["pos"]
    np.testing.assert_allclose(probs, [[0.0, 1.0]])
