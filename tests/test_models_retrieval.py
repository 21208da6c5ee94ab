"""The retrieval model's ranking shortcuts for large knowledge bases: top_k is a full stable
sort's head, ranks past the window are shared, and per_answer takes each answer's best
question."""

import numpy as np

from lmforge.models.retrieval import RANK_WINDOW, QuestionIndex, ranks, top_k


def test_top_k_is_the_head_of_a_stable_sort_ties_and_all():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 80))
        k = int(rng.integers(1, n + 1))
        scores = rng.integers(0, 4, (3, n)).astype(float)  # many ties
        scores[0, :3] = -np.inf
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert (top_k(scores, k) == expected).all()


def test_ranks_are_exact_in_the_window_and_shared_past_it():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, RANK_WINDOW + 500))
    exact = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
    got = ranks(scores)
    inside = exact <= RANK_WINDOW
    assert (got[inside] == exact[inside]).all()
    assert (got[~inside] == RANK_WINDOW + 1).all()
    small = scores[:, :50]
    assert (ranks(small) == np.argsort(np.argsort(-small, axis=1, kind="stable"), axis=1) + 1
            ).all()


def test_per_answer_takes_each_answers_best_question_and_leaves_absent_ones_unscored():
    answer_of = np.array([2, 0, 2, 0, 3])
    index = QuestionIndex(["a b", "c d", "e f", "g h", "i j"], answer_of, 5,
                          np.eye(5, dtype=np.float32))
    scores = np.array([[0.1, 0.5, 0.9, 0.2, 0.3]])
    out = index.per_answer(scores)
    assert out[0].tolist() == [0.5, -np.inf, 0.9, 0.3, -np.inf]
