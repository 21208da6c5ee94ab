"""model.arch auto (classification): besides lmforge's encoder (trained by the loop), fit
TF-IDF + logistic regression and, when model.pretrained is named, fine-tune that model; fuse them
on the validation split (evaluation/fusion.py); ship the one best on validation, a single model or
the fusion; score every one on the test split (eval.json's "leaderboard").

    runs/<name>/candidates/<candidate>/   each candidate's bundle (fusion: the ensemble's)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lmforge.bundle import TextClassifier, load, save_bundle
from lmforge.config import Config
from lmforge.data import Split
from lmforge.evaluation.fusion import fit_weights, fuse
from lmforge.evaluation.leaderboard import scores
from lmforge.evaluation.metrics import encode_labels
from lmforge.models.tfidf import TfidfLogReg
from lmforge.tasks.classifiers import save_ensemble_bundle, save_tfidf_bundle, tfidf_meta
from lmforge.tasks.recipe import Evaluated, Log, Prepared
from lmforge.training import fit
from lmforge.training.checkpoint import load_checkpoint

CANDIDATES_DIR = "candidates"
FUSION = "fusion"


def select(
    recipe: Any, run: Prepared, model: nn.Module, run_dir: Path, log: Log,
    evaluate: Callable[[TextClassifier, Split], Evaluated],
) -> Evaluated:
    """The candidates' bundles under run_dir/candidates, the one to ship (Evaluated.bundle),
    and its test report (`evaluate`: beside the baselines) with the leaderboard."""
    cfg, data = run.cfg, run.parts["data"]
    labels, root = data.label_names, run_dir / CANDIDATES_DIR
    candidates = {"transformer": _save_encoder(recipe, run, model, run_dir, root)}
    if cfg.model.pretrained:
        candidates["pretrained"] = _train_pretrained(recipe, cfg, run_dir, root, log)
    if len(set(data.train.labels)) > 1:  # logistic regression needs two classes
        candidates["tfidf_logreg"] = _save_tfidf(recipe, run, model, run_dir, root)
    predictors = {name: load(path, device="cpu") for name, path in candidates.items()}
    val_gold = encode_labels(data.val.labels, labels, "val labels")
    val_probs = {name: p.probabilities(data.val.texts)[0] for name, p in predictors.items()}
    weights = fit_weights(list(val_probs.values()), val_gold)
    if np.count_nonzero(weights) > 1:
        val_probs[FUSION] = fuse(list(val_probs.values()), weights)
    val = {name: scores(data.val.labels, p, labels) for name, p in val_probs.items()}
    metric = cfg.train.early_stopping_metric
    key, sign = ("log_loss", -1) if metric == "val_loss" else (metric, 1)
    best = max(val, key=lambda name: sign * val[name][key])  # ties: the first in order
    log(f"arch auto: {', '.join(f'{n} {val[n][key]:.4f}' for n in val)} (val {key}); "
        f"shipping {best}")
    if best == FUSION:
        members = [(name, candidates[name]) for name in predictors]
        save_ensemble_bundle(root / FUSION, members, list(weights),
                             {"run": recipe.bundle_meta(run, model, run_dir)["run"]})
        candidates[FUSION] = root / FUSION
        shipped = load(root / FUSION, device="cpu")
    else:
        shipped = predictors[best]
    rows = _leaderboard(predictors, weights, val, best, data, cfg)
    if not data.test.texts:
        report = {"leaderboard": rows, "shipped": best}
        return Evaluated(report, scored_test=False, bundle=candidates[best])
    tested = evaluate(shipped, data.test)
    tested.report["leaderboard"] = rows
    tested.report["shipped"] = best
    tested.bundle = candidates[best]
    return tested


def _leaderboard(
    predictors: dict[str, TextClassifier], weights: np.ndarray, val: dict[str, dict],
    best: str, data: Any, cfg: Config,
) -> list[dict[str, Any]]:
    """Each candidate and the fusion: weight, val scores, test scores with intervals."""
    labels, test = data.label_names, data.test
    probs = {name: p.probabilities(test.texts)[0] for name, p in predictors.items()} \
        if test.texts else {}
    if probs and FUSION in val:
        probs[FUSION] = fuse([probs[name] for name in predictors], weights)
    rows = []
    for i, name in enumerate(val):
        row = {"name": name, "val": val[name], "shipped": name == best}
        row["weight"] = float(weights[i]) if name in predictors else 1.0
        if probs:
            row["test"] = scores(test.labels, probs[name], labels, cfg.eval.bootstrap,
                                 cfg.train.seed)
        rows.append(row)
    return rows


def _save_encoder(recipe: Any, run: Prepared, model: nn.Module, run_dir: Path, root: Path) -> Path:
    meta = {**recipe.bundle_meta(run, model, run_dir), "arch": "transformer"}
    save_bundle(root / "transformer", model, run.tokenizer, meta)
    return root / "transformer"


def _save_tfidf(recipe: Any, run: Prepared, model: nn.Module, run_dir: Path, root: Path) -> Path:
    data = run.parts["data"]
    y = encode_labels(data.train.labels, data.label_names, "train labels")
    tfidf = TfidfLogReg.fit(data.train.texts, y, len(data.label_names), run.cfg.train.seed)
    save_tfidf_bundle(root / "tfidf_logreg", tfidf,
                      tfidf_meta(recipe.bundle_meta(run, model, run_dir)))
    return root / "tfidf_logreg"


def _train_pretrained(recipe: Any, cfg: Config, run_dir: Path, root: Path, log: Log) -> Path:
    """Fine-tune model.pretrained on the same split (its own tokenizer), as a run of its own
    under candidates/pretrained-run, and bundle its best checkpoint."""
    sub_cfg = cfg.model_copy(deep=True)
    sub_cfg.model.arch = "pretrained"
    sub_dir = root / "pretrained-run"
    sub_dir.mkdir(parents=True, exist_ok=True)
    log(f"arch auto: fine-tuning {cfg.model.pretrained}")
    run = recipe.prepare(sub_cfg, sub_dir, False, log)
    model = recipe.build_model(run, sub_dir, False, True, log)
    plan = recipe.training(run, model)
    result = fit(model, plan.examples, plan.collate, plan.loss, plan.val_metrics, sub_cfg.train,
                 sub_dir, metric_mode=plan.metric_mode, lengths=plan.lengths)
    if result.best_dir is not None:
        load_checkpoint(result.best_dir, model, with_state=False)
    save_bundle(root / "pretrained", model, run.tokenizer, recipe.bundle_meta(run, model, run_dir))
    return root / "pretrained"
