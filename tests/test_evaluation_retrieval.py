"""Retrieval metrics: the gold answer's rank (ties broken as the assistant chooses), hit@k and
MRR with bootstrap intervals, and the calibration error of a confidence."""

import numpy as np
import pytest

from lmforge.evaluation.retrieval import binary_ece, gold_ranks, ranking_metrics


def test_a_tie_goes_to_the_answer_listed_first_as_argmax_chooses():
    scores = np.array([[1.0, 1.0, 0.5], [0.2, 0.9, 0.9], [0.1, 0.3, 0.7]])
    ranks = gold_ranks(scores, np.array([1, 1, 0]))
    assert ranks.tolist() == [2, 1, 3]
    assert (ranks == 1).tolist() == (scores.argmax(axis=1) == [1, 1, 0]).tolist()


def test_hit_at_k_and_mrr_with_intervals():
    report = ranking_metrics(np.array([1, 2, 6, 1]))
    assert report["n"] == 4 and report["hit@1"] == 0.5 and report["hit@5"] == 0.75
    assert report["mrr"] == pytest.approx((1 + 0.5 + 1 / 6 + 1) / 4)
    low, high = report["hit@1_ci95"]
    assert 0 <= low <= 0.5 <= high <= 1


def test_calibration_error_is_zero_when_confidence_matches_the_hit_rate():
    confidence = np.array([0.25] * 4 + [0.75] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    assert binary_ece(confidence, correct) == pytest.approx(0.0)
    assert binary_ece(np.full(4, 0.9), np.zeros(4)) == pytest.approx(0.9)
