"""Metrics agree with hand-computed numbers; bootstrap intervals behave as a user expects."""

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluation import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap_difference,
)
from lmforge.evaluation.metrics import _accuracy_and_f1

LABELS = ["neg", "neu", "pos"]
# "neu" occurs once in gold and is never predicted.
GOLD = ["neg", "neg", "neg", "pos", "pos", "neu"]
PRED = ["neg", "neg", "pos", "pos", "neg", "pos"]


def _noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    gold = rng.choice(LABELS, size=n).tolist()
    pred = [g if rng.random() < accuracy else str(rng.choice(LABELS)) for g in gold]
    return gold, pred


def test_metrics_match_a_hand_computed_example():
    m = classification_metrics(GOLD, PRED, LABELS)
    assert m["n"] == 6
    assert m["labels"] == LABELS
    assert m["accuracy"] == pytest.approx(0.5)
    # Rows are gold labels, columns predictions, both in LABELS order.
    assert m["confusion_matrix"] == [[2, 0, 1], [0, 0, 1], [1, 0, 1]]
    assert m["per_class"]["neg"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m["per_class"]["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["pos"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2}
    )
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0 + 0.4) / 3)
    assert m["precision_macro"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3)
    assert m["roc_auc"] is None  # three classes


def test_metrics_are_plain_python_values():
    m = classification_metrics(GOLD, PRED, LABELS)
    assert type(m["accuracy"]) is float
    assert type(m["per_class"]["neg"]["support"]) is int
    assert all(type(c) is int for row in m["confusion_matrix"] for c in row)


def test_roc_auc_for_binary_tasks_uses_the_second_label_as_positive():
    gold = ["bad", "bad", "good", "good"]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8]])
    m = classification_metrics(gold, ["bad", "good", "bad", "good"], ["bad", "good"], probs)
    # Of the four (good, bad) pairs, three rank the good text higher.
    assert m["roc_auc"] == pytest.approx(0.75)


def test_roc_auc_is_none_when_gold_has_one_class():
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    m = classification_metrics(["bad", "bad"], ["bad", "good"], ["bad", "good"], probs)
    assert m["roc_auc"] is None


def test_unknown_label_is_a_clear_error():
    with pytest.raises(LmforgeError, match="'meh'"):
        classification_metrics(["neg", "meh"], ["neg", "neg"], LABELS)


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(LmforgeError, match="3 gold labels but 2 predictions"):
        classification_metrics(["neg"] * 3, ["neg"] * 2, LABELS)


def test_resampled_f1_uses_the_same_definition_as_the_point_estimate():
    gold, pred = _noisy_predictions(50, 0.6, seed=1)
    index = {label: i for i, label in enumerate(LABELS)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in pred])
    rows = np.random.default_rng(0).integers(0, 50, size=(20, 50))
    accuracy, f1 = _accuracy_and_f1(g[rows], p[rows], len(LABELS))
    for r, row in enumerate(rows):
        expected = classification_metrics([gold[i] for i in row], [pred[i] for i in row], LABELS)
        assert accuracy[r] == pytest.approx(expected["accuracy"])
        assert f1[r] == pytest.approx(expected["f1_macro"])


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    widths = []
    for n in (100, 4000):
        gold, pred = _noisy_predictions(n, 0.7, seed=n)
        point = classification_metrics(gold, pred, LABELS)
        ci = bootstrap_intervals(gold, pred, LABELS, n_resamples=500, seed=0)
        for key in ("accuracy", "f1_macro"):
            lo, hi = ci[key]
            assert lo <= point[key] <= hi
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # width shrinks like 1/sqrt(n): sqrt(40) is about 6


def test_bootstrap_is_reproducible_with_a_seed():
    gold, pred = _noisy_predictions(200, 0.7, seed=3)
    first = bootstrap_intervals(gold, pred, LABELS, n_resamples=200, seed=7)
    assert bootstrap_intervals(gold, pred, LABELS, n_resamples=200, seed=7) == first


def test_paired_difference_of_a_model_against_itself_is_zero():
    gold, pred = _noisy_predictions(300, 0.7, seed=4)
    diff = paired_bootstrap_difference(gold, pred, pred, LABELS, n_resamples=200)
    for key in ("accuracy", "f1_macro"):
        assert diff[key] == {"difference": 0.0, "ci95": [0.0, 0.0]}
    assert diff["p_model_not_better"] == 1.0


def test_paired_difference_sees_a_clearly_better_model():
    gold, good = _noisy_predictions(1000, 0.9, seed=5)
    rng = np.random.default_rng(6)
    bad = [g if rng.random() < 0.5 else "neg" for g in gold]
    diff = paired_bootstrap_difference(gold, good, bad, LABELS, n_resamples=300)
    lo, hi = diff["accuracy"]["ci95"]
    assert 0 < lo <= diff["accuracy"]["difference"] <= hi
    assert diff["p_model_not_better"] == 0.0
