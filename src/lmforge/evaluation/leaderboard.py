"""The leaderboard: several models (an ensemble's members, arch auto's candidates and their
fusion) scored on the same split, with bootstrap intervals, as eval.json's "leaderboard" and a
table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lmforge.evaluation.fusion import log_loss
from lmforge.evaluation.metrics import bootstrap_intervals, classification_metrics, encode_labels


def scores(
    gold: Sequence[str], probs: np.ndarray, labels: list[str], bootstrap: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Accuracy, macro-F1 and log loss of probabilities (n, classes) against gold labels, with
    95% bootstrap intervals of the first two when `bootstrap` > 0."""
    pred = [labels[i] for i in probs.argmax(axis=1)]
    metrics = classification_metrics(gold, pred, labels)
    out = {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
           "log_loss": log_loss(probs, encode_labels(gold, labels, "gold"))}
    if bootstrap > 0:
        out["ci95"] = bootstrap_intervals(gold, pred, labels, bootstrap, seed)
    return out


def _cell(figures: dict[str, Any] | None, key: str) -> str:
    if not figures:
        return "—"
    cell = f"{figures[key]:.3f}"
    if key in figures.get("ci95", {}):
        lo, hi = figures["ci95"][key]
        cell += f" [{lo:.3f}, {hi:.3f}]"
    return cell


def render_leaderboard(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    """One row per model: its weight in the fusion (if any), validation and test scores; the
    shipped one marked with *."""
    with_val = any(row.get("val") for row in rows)
    with_weight = any("weight" in row for row in rows)
    table = Table(title=title)
    table.add_column("model")
    if with_weight:
        table.add_column("weight", justify="right")
    if with_val:
        table.add_column("val accuracy", justify="right")
        table.add_column("val f1_macro", justify="right")
    table.add_column("test accuracy", justify="right")
    table.add_column("test f1_macro", justify="right")
    for row in rows:
        cells = [escape(row["name"]) + (" *" if row.get("shipped") else "")]
        if with_weight:
            cells.append(f"{row['weight']:.2f}" if "weight" in row else "")
        if with_val:
            cells += [_cell(row.get("val"), "accuracy"), _cell(row.get("val"), "f1_macro")]
        cells += [_cell(row.get("test"), "accuracy"), _cell(row.get("test"), "f1_macro")]
        table.add_row(*cells)
    console.print(table)
