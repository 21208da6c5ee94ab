"""Model fusion: weights for averaging several classifiers' probabilities, fitted on a validation
split by greedy ensemble selection with replacement (Caruana et al. 2004, as AutoGluon does)."""

from __future__ import annotations

import numpy as np

from lmforge.errors import LmforgeError

ROUNDS = 25  # members added, with replacement: weights are multiples of 1/25
_EPS = 1e-12


def log_loss(probs: np.ndarray, gold: np.ndarray) -> float:
    """Mean negative log-probability of the gold label index."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(gold)), gold], _EPS, 1.0))))


def fit_weights(
    member_probs: list[np.ndarray], gold: np.ndarray, rounds: int = ROUNDS
) -> np.ndarray:
    """One weight per member, summing to 1: start from nothing, add the member (again, if it
    helps most) whose addition gives the average with the lowest validation log loss, `rounds`
    times, and keep the best average seen. Log loss rather than accuracy: it is smooth, so a
    small validation split still ranks additions, and it tells calibrated members from
    over-confident ones. A member that never helps gets weight 0."""
    if not member_probs:
        raise LmforgeError("fusion needs at least one member")
    if len(gold) == 0:
        raise LmforgeError("fusion needs a validation split with at least one text")
    counts = np.zeros(len(member_probs))
    total = np.zeros_like(member_probs[0], dtype=np.float64)
    best_loss, best_counts = np.inf, counts.copy()
    for step in range(1, rounds + 1):
        losses = [log_loss((total + p) / step, gold) for p in member_probs]
        choice = int(np.argmin(losses))  # ties: the earlier member
        counts[choice] += 1
        total += member_probs[choice]
        if losses[choice] < best_loss - 1e-12:
            best_loss, best_counts = losses[choice], counts.copy()
    return best_counts / best_counts.sum()


def fuse(member_probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted average of the members' (n, classes) probabilities."""
    return sum(w * p for w, p in zip(weights, member_probs, strict=True))
