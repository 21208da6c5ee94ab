"""eval.json: the model's test metrics beside the baselines, and the table that shows them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmforge.config import EvalConfig
from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import majority_baseline, tfidf_logreg_baseline
from lmforge.evaluation.leaderboard import render_leaderboard
from lmforge.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    paired_bootstrap_difference,
)

BASELINES = ("majority", "tfidf_logreg", "pixel_logreg")  # pixel_logreg: images'
# The README section a result that does not beat its baseline points to.
BASELINE_HELP = 'see "When the model does not beat its baseline" in README.md'

_AGGREGATES = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
# With more classes than this, per-class precision and recall rows would drown the table.
_MAX_LABELS_FOR_PER_CLASS_PR = 4


def build_eval_report(
    *,
    gold: Sequence[str],
    pred: Sequence[str],
    probs: np.ndarray | None,
    labels: list[str],
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    test_texts: Sequence[str],
    config: EvalConfig,
    seed: int = 0,
) -> dict:
    """The content of eval.json: model metrics, intervals, baselines and model-vs-TF-IDF."""
    if len(test_texts) != len(gold):
        raise LmforgeError(f"{len(test_texts)} test texts but {len(gold)} gold labels")
    report = classification_metrics(gold, pred, labels, probs)
    report["bootstrap_resamples"] = config.bootstrap
    if config.bootstrap > 0:
        report["ci95"] = bootstrap_intervals(gold, pred, labels, config.bootstrap, seed)
    if not config.baselines:
        return report
    majority_pred, majority_probs = majority_baseline(train_labels, len(gold), labels)
    tfidf_pred, tfidf_probs = tfidf_logreg_baseline(
        train_texts, train_labels, test_texts, labels, seed
    )
    report["baselines"] = {
        "majority": classification_metrics(gold, majority_pred, labels, majority_probs),
        "tfidf_logreg": classification_metrics(gold, tfidf_pred, labels, tfidf_probs),
    }
    if config.bootstrap > 0:
        report["vs_tfidf_logreg"] = paired_bootstrap_difference(
            gold, pred, tfidf_pred, labels, config.bootstrap, seed
        )
    return report


def _signed(value: float) -> str:
    # A true minus sign lines up with the plus sign in the comparison line.
    return f"{value:+.3f}".replace("-", "\u2212")


def _rows(report: dict) -> list[tuple[str, str, str | None]]:
    """(row name, metric key, label or None) in display order."""
    rows: list[tuple[str, str, str | None]] = [(name, name, None) for name in _AGGREGATES]
    if report.get("roc_auc") is not None:
        rows.append(("roc_auc", "roc_auc", None))
    per_class = ["f1"]
    if len(report["labels"]) <= _MAX_LABELS_FOR_PER_CLASS_PR:
        per_class = ["precision", "recall", "f1"]
    for label in report["labels"]:
        rows.extend((f"{key}[{label}]", key, label) for key in per_class)
    return rows


def _cell(metrics: dict, key: str, label: str | None) -> str:
    value = metrics["per_class"][label][key] if label is not None else metrics.get(key)
    return "—" if value is None else f"{value:.3f}"


def render_table(report: dict, console: Console, title: str = "Test split") -> None:
    """Print the model beside the baselines (with 95% intervals where computed)."""
    baselines = report.get("baselines", {})
    intervals = report.get("ci95", {})
    table = Table(title=f"{title} (n={report['n']})")
    table.add_column("metric")
    table.add_column("model", justify="right")
    for name in BASELINES:
        if name in baselines:
            table.add_column(name, justify="right")
    for row_name, key, label in _rows(report):
        model_cell = _cell(report, key, label)
        if label is None and key in intervals:
            lo, hi = intervals[key]
            model_cell += f" [{lo:.3f}, {hi:.3f}]"
        cells = [_cell(baselines[name], key, label) for name in BASELINES if name in baselines]
        # Labels are user text: "f1[neg]" would otherwise be read as rich markup and vanish.
        table.add_row(escape(row_name), model_cell, *cells)
    console.print(table)
    comparison = report.get("vs_tfidf_logreg")
    if comparison:
        parts = []
        for key in ("accuracy", "f1_macro"):
            lo, hi = comparison[key]["ci95"]
            parts.append(
                f"{key} {_signed(comparison[key]['difference'])} [{_signed(lo)}, {_signed(hi)}]"
            )
        console.print(
            f"model \u2212 tfidf_logreg: {', '.join(parts)} "
            f"(not better in {comparison['p_model_not_better']:.1%} of resamples)",
            markup=False,
        )
    if report.get("leaderboard"):
        render_leaderboard(report["leaderboard"], console, "Leaderboard (* the model above)")
    beaten_by = _best_baseline_not_beaten(report)
    if beaten_by is not None:
        console.print(
            f"the model does not beat {beaten_by}: try a pretrained encoder (model.arch: "
            "pretrained), more labelled data, or masked-LM pre-training on your texts "
            f"(classification.pretrain_steps); {BASELINE_HELP}",
            markup=False,
        )


def _best_baseline_not_beaten(report: dict) -> str | None:
    """The baseline that scores at least as well as the model on accuracy or macro-F1 (the
    better of them, by accuracy), or None when the model beats them all."""
    baselines = report.get("baselines", {})
    level = [name for name in BASELINES if name in baselines and any(
        baselines[name][key] >= report[key] for key in ("accuracy", "f1_macro"))]
    return max(level, key=lambda name: baselines[name]["accuracy"]) if level else None


def render_beside_baselines(report: dict, console: Console, title: str, keys: Sequence[str],
                            regression: bool, subject: str, advice: str) -> None:
    """A regression's or a feature table's figures (with intervals) beside each baseline's; when
    a baseline does better (R², or accuracy), one line says so: "{baseline} does better than
    {subject} ({key}){advice}"."""
    baselines = report.get("baselines", {})
    table = Table(title=f"{title} (n={report['n']})")
    for column in ("metric", "model", *baselines):
        table.add_column(column, justify="left" if column == "metric" else "right")
    intervals = report.get("ci95") or {}
    for key in keys:
        if report.get(key) is None and key == "roc_auc":
            continue
        cell = "—" if report.get(key) is None else f"{report[key]:.4f}"
        if intervals.get(key):
            cell += f" [{intervals[key][0]:.4f}, {intervals[key][1]:.4f}]"
        others = ["—" if b.get(key) is None else f"{b[key]:.4f}" for b in baselines.values()]
        table.add_row(key, cell, *others)
    console.print(table)
    better = baseline_winner(report, regression)
    if better is not None:
        key = "r2" if regression else "accuracy"
        console.print(f"{better} does better than {subject} ({key}){advice}", markup=False)


def baseline_winner(report: dict, regression: bool) -> str | None:
    """The best baseline when it beats the model (accuracy, or R²), else None."""
    key = "r2" if regression else "accuracy"
    scored = {name: b[key] for name, b in report.get("baselines", {}).items()
              if b.get(key) is not None}
    if not scored or report.get(key) is None:
        return None
    best = max(scored, key=lambda name: scored[name])
    return best if scored[best] > report[key] else None
