"""Retrieval metrics of the assistant: hit@k and MRR from the gold answer's rank, with 95%
bootstrap intervals, and the calibration (ECE) of a confidence that the top answer is right."""

from __future__ import annotations

from typing import Any

import numpy as np

BOOTSTRAP_ROUNDS = 1000


def gold_ranks(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The rank (1 = best) of each query's gold answer among the answers' scores; a tie goes
    to the answer listed first, as the assistant's own choice (argmax) does."""
    gold_score = scores[np.arange(len(gold)), gold][:, None]
    listed_first = np.arange(scores.shape[1])[None, :] < gold[:, None]
    ahead = (scores > gold_score) | ((scores == gold_score) & listed_first)
    return 1 + ahead.sum(axis=1)


def _interval(per_query: np.ndarray, rng: np.random.Generator,
              rounds: int = BOOTSTRAP_ROUNDS) -> list[float]:
    picks = rng.integers(0, len(per_query), size=(rounds, len(per_query)))
    means = per_query[picks].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def ranking_metrics(ranks: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """hit@1, hit@5 and MRR of the gold answers' ranks, each with a 95% bootstrap interval."""
    per_query = {"hit@1": (ranks <= 1).astype(float), "hit@5": (ranks <= 5).astype(float),
                 "mrr": 1.0 / ranks}
    return means_with_intervals(per_query, seed)


def means_with_intervals(per_query: dict[str, np.ndarray], seed: int = 0,
                         rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, Any]:
    """Each per-query figure's mean over the queries, with a 95% bootstrap interval of
    `rounds` resamples (0: none)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n": int(len(next(iter(per_query.values()))))}
    for name, values in per_query.items():
        out[name] = float(values.mean()) if len(values) else None
        out[f"{name}_ci95"] = _interval(values, rng, rounds) if len(values) and rounds else None
    return out


def binary_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float | None:
    """Expected calibration error of a probability that each answer is right."""
    if len(confidence) == 0:
        return None
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(ece)
