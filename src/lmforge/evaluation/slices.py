"""Slice metrics (eval.slices): the test metrics per value of a column the model does not read
(a region, a channel, a customer group), the largest gap between values, and a warning where
a value has too few rows to judge."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from lmforge.evaluation.metrics import bootstrap_intervals, classification_metrics

# Below this many test rows a value's metrics are shown but called too few to judge.
MIN_SLICE_ROWS = 30
_KEPT = ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro")
_GAP_METRICS = ("accuracy", "f1_macro")


def _value_metrics(
    gold: list[str], pred: list[str], labels: list[str], n_resamples: int, seed: int
) -> dict[str, Any]:
    # Macro averages over the classes this slice holds: a class absent from it (no gold, no
    # prediction) would otherwise count as an F1 of 0 and make every small slice look bad.
    present = [label for label in labels if label in set(gold) | set(pred)]
    with warnings.catch_warnings():  # scikit-learn warns of a slice holding a single class
        warnings.simplefilter("ignore", UserWarning)
        metrics = classification_metrics(gold, pred, present)
    out = {key: metrics[key] for key in _KEPT}
    if n_resamples > 0:
        out["ci95"] = bootstrap_intervals(gold, pred, present, n_resamples, seed)
    return out


def slice_report(
    gold: Sequence[str],
    pred: Sequence[str],
    labels: list[str],
    columns: dict[str, list[str]],
    n_resamples: int,
    seed: int = 0,
) -> dict[str, Any]:
    """eval.json's `slices` ({column: {value: metrics}}), `slice_gaps` ({column: {metric:
    {difference, best, worst}}} over the values with at least MIN_SLICE_ROWS rows, or all values
    when fewer than two have that many) and `slice_warnings`."""
    slices: dict[str, dict[str, Any]] = {}
    gaps: dict[str, dict[str, Any]] = {}
    too_few: list[str] = []
    for column, values in columns.items():
        rows: dict[str, list[int]] = {}
        for i, value in enumerate(values):
            rows.setdefault(value, []).append(i)
        per_value = {
            value: _value_metrics([gold[i] for i in rows[value]], [pred[i] for i in rows[value]],
                                  labels, n_resamples, seed)
            for value in sorted(rows)
        }
        slices[column] = per_value
        few = [value for value, m in per_value.items() if m["n"] < MIN_SLICE_ROWS]
        if few:
            too_few.append(
                f"{column}: too few test rows to judge (under {MIN_SLICE_ROWS}) for "
                + ", ".join(f"{value} ({per_value[value]['n']})" for value in few)
            )
        judged = [value for value in per_value if value not in few]
        compared = judged if len(judged) >= 2 else list(per_value)
        if len(compared) >= 2:
            gaps[column] = {metric: _gap(per_value, compared, metric) for metric in _GAP_METRICS}
            gaps[column]["values_compared"] = len(compared)
    return {"slices": slices, "slice_gaps": gaps, "slice_warnings": too_few}


def _gap(per_value: dict[str, dict], values: list[str], metric: str) -> dict[str, Any]:
    best = max(values, key=lambda value: per_value[value][metric])
    worst = min(reversed(values), key=lambda value: per_value[value][metric])  # not `best`
    difference = per_value[best][metric] - per_value[worst][metric]
    return {"difference": difference, "best": best, "worst": worst}


def render_slices(report: dict, console: Console) -> None:
    """One line per sliced column: its largest gap; then the warnings."""
    for column, gap in report.get("slice_gaps", {}).items():
        parts = [f"{metric} {gap[metric]['difference']:.3f} ({escape(gap[metric]['best'])} "
                 f"vs {escape(gap[metric]['worst'])})" for metric in _GAP_METRICS]
        console.print(f"slices by {escape(column)}: largest gap " + ", ".join(parts))
    for warning in report.get("slice_warnings", []):
        console.print(f"warning: {escape(warning)}")
