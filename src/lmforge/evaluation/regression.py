"""Regression metrics (MAE, RMSE, R²) with 95% bootstrap intervals, resampling examples."""

from __future__ import annotations

from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.evaluation.metrics import _index_chunks, _percentile_interval

METRICS = ("mae", "rmse", "r2")


def _errors(gold: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric per row of (resamples, n) matrices of targets and predictions."""
    residual = pred - gold
    total = ((gold - gold.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    sse = (residual**2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1 - sse / np.where(total > 0, total, 1), np.nan)
    return {"mae": np.abs(residual).mean(axis=-1), "rmse": np.sqrt((residual**2).mean(axis=-1)),
            "r2": r2}


def regression_metrics(gold: np.ndarray, pred: np.ndarray, n_resamples: int = 0,
                       seed: int = 0) -> dict[str, Any]:
    """n, mae, rmse and r2 (None when the targets are all equal); with n_resamples, "ci95"
    holds each metric's 95% percentile bootstrap interval."""
    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if len(gold) != len(pred):
        raise LmforgeError(f"{len(gold)} targets but {len(pred)} predictions")
    if len(gold) == 0:
        raise LmforgeError("cannot evaluate on zero examples")
    point = _errors(gold, pred)
    report: dict[str, Any] = {"n": len(gold)}
    for name in METRICS:
        value = float(point[name])
        report[name] = None if np.isnan(value) else value
    if n_resamples > 0:
        draws: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
        for idx in _index_chunks(len(gold), n_resamples, seed):
            for name, values in _errors(gold[idx], pred[idx]).items():
                draws[name].append(values)
        report["ci95"] = {}
        for name in METRICS:
            values = np.concatenate(draws[name])
            values = values[~np.isnan(values)]
            report["ci95"][name] = _percentile_interval(values) if values.size else None
    return report


def val_regression_metrics(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """What a regression's validation reports every eval_every steps: val_rmse, val_mae,
    val_r2 (0 when the targets are all equal) and val_loss (the mean squared error)."""
    found = regression_metrics(gold, pred)
    return {"val_rmse": found["rmse"], "val_mae": found["mae"],
            "val_r2": found["r2"] if found["r2"] is not None else 0.0,
            "val_loss": found["rmse"] ** 2}


def ridge_cv() -> Any:
    """Ridge regression with its strength chosen by (leave-one-out) cross-validation: the
    regression baseline of feature tables and of texts (over TF-IDF features)."""
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.logspace(-3, 3, 13))
