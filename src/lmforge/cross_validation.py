"""k-fold cross-validation of a run (`lmforge train --cv K`), for any task through its recipe.

The train and val splits are pooled and cut into K folds (stratified by label where the task
has labels; a text and its duplicates always in the same fold); the test split is never used.
Each fold trains a model on the other K-1 folds, with a val share of them held out for early
stopping and the best checkpoint as in a normal run, and is scored on its own fold by the
recipe's test report: the held-out fold is neither trained on nor used to pick a checkpoint.
cv.json holds each fold's figures, their mean and std.

The bundle is then one model refit on every train and val row (no fold ensemble: one model
serves as fast as a normal run's). With no rows left for validation, the refit trains for the
folds' median best step, scaled to the larger data (the same number of epochs); with no val in
the folds, for the configured schedule.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.data.split import cv_folds
from lmforge.errors import LmforgeError
from lmforge.files import write_json_atomic
from lmforge.tasks.recipe import Log, Prepared, TaskRecipe, pool
from lmforge.training import distributed, fit
from lmforge.training.checkpoint import load_checkpoint

CV_FILE = "cv.json"
FOLDS_DIR = "cv"  # run_dir/cv/fold-<i>/: each fold's metrics.jsonl and TensorBoard logs


def cross_validate(
    recipe: TaskRecipe, run: Prepared, k: int, run_dir: Path, show_progress: bool, log: Log
) -> tuple[dict[str, Any], Prepared]:
    """(cv.json's content, the run refit on every train and val row). Under torchrun every
    rank runs the folds one after another, as they run one training; rank 0 writes."""
    if k < 2:
        raise LmforgeError(f"--cv {k}: cross-validation needs at least 2 folds")
    cfg = run.cfg
    texts = pool(run)
    labels = run.labels["train"] + run.labels["val"] if run.labels else None
    held_out = cv_folds(texts, labels, k, cfg.data.split.seed)
    everything = np.arange(len(texts))
    folds = []
    for number, held in enumerate(held_out, start=1):
        rest = np.setdiff1d(everything, held)
        train, val = _hold_out_val(rest, texts, labels, cfg)
        log(f"fold {number}/{k}: training on {len(train)} rows (val {len(val)}), "
            f"scoring on {len(held)}")
        fold = recipe.refold(run, {"train": train, "val": val, "test": held})
        folds.append(_run_fold(recipe, fold, run_dir / FOLDS_DIR / f"fold-{number}",
                               show_progress, log) | {"fold": number, "train_rows": len(train),
                                                      "val_rows": len(val),
                                                      "held_out_rows": len(held)})
    refit = recipe.refold(run, {"train": everything, "val": everything[:0]})
    steps = _refit_steps(folds, len(texts))
    if steps is not None:
        refit.cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"max_steps": steps})})
    report = {"k": k, "folds": folds, **_mean_std(folds),
              "refit": {"rows": len(texts), "max_steps": steps or cfg.train.max_steps}}
    distributed.on_main(lambda: write_json_atomic(run_dir / CV_FILE, report))
    return report, refit


def _hold_out_val(
    rows: np.ndarray, texts: list[str], labels: list[str] | None, cfg: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) of a fold's training rows: val the run's val share of them (one of
    round(1 / share) grouped folds), none when data.split.val is 0."""
    share = cfg.data.split.val / (1 - cfg.data.split.test)
    if share == 0:
        return rows, rows[:0]
    parts = max(2, round(1 / share))
    fold_labels = [labels[i] for i in rows] if labels else None
    if fold_labels and min(Counter(fold_labels).values()) < parts:
        fold_labels = None  # a class too small to stratify the val share
    val = rows[cv_folds([texts[i] for i in rows], fold_labels, parts, cfg.data.split.seed)[0]]
    return np.setdiff1d(rows, val), val


def _run_fold(
    recipe: TaskRecipe, fold: Prepared, fold_dir: Path, show_progress: bool, log: Log
) -> dict[str, Any]:
    """Train one fold's model (its best checkpoint, as a run keeps) and score its held-out
    rows; its checkpoints are deleted after, its logs kept."""
    distributed.on_main(lambda: fold_dir.mkdir(parents=True, exist_ok=True))
    distributed.barrier()
    model = recipe.build_model(fold, fold_dir, False, show_progress, log)
    plan = recipe.training(fold, model)
    steps = best_step = None
    if plan is not None:  # None: build_model made the whole model
        result = fit(model, plan.examples, plan.collate, plan.loss, plan.val_metrics,
                     fold.cfg.train, fold_dir, metric_mode=plan.metric_mode,
                     show_progress=show_progress, lengths=plan.lengths)
        steps, best_step = result.state.step, result.state.best_step
        model = result.model  # under FSDP, whole on rank 0 only
        if result.best_dir is not None and model is not None:
            load_checkpoint(result.best_dir, model, with_state=False)
    tested = distributed.on_main(lambda: recipe.test(fold, model))
    distributed.barrier()
    distributed.on_main(lambda: shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True))
    return {"metrics": recipe.summary(tested.report) if tested is not None else {},
            "steps": steps, "best_step": best_step}


def _refit_steps(folds: list[dict[str, Any]], rows: int) -> int | None:
    """The folds' median best step, scaled from a fold's training rows to `rows`."""
    best = [fold["best_step"] for fold in folds]
    if any(step is None for step in best):
        return None
    scale = rows / statistics.median(fold["train_rows"] for fold in folds)
    return max(1, math.ceil(statistics.median(best) * scale))


def _mean_std(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample std over the folds of each measured figure (not the counts) that every
    fold reports."""
    names = [name for name, value in folds[0]["metrics"].items() if isinstance(value, float)
             and all(isinstance(fold["metrics"].get(name), float) for fold in folds)]
    values = {name: [float(fold["metrics"][name]) for fold in folds] for name in names}
    return {"mean": {name: statistics.fmean(v) for name, v in values.items()},
            "std": {name: statistics.stdev(v) if len(v) > 1 else 0.0
                    for name, v in values.items()}}
