"""report.html: a run as one self-contained page (plots embedded as base64 PNG, no scripts, no
network): learning curves, the task's views of eval.json, the data report and provenance.

Each task names its report kind (a recipe's `report_kind`); SECTIONS maps a kind to the
function that builds its own sections, between the curves and the data report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.files import write_atomic

Section = tuple[str, str]  # (title, HTML body)
WORST_ERRORS = 15
RELIABILITY_BINS = 10

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right}
img{max-width:100%;margin:.5em 1em .5em 0}nav a{margin-right:1em}.warn{color:#a40}
"""


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return _esc(value)


def _figure(width: float = 5.5, height: float = 3.6) -> Any:
    # The Agg canvas directly, not pyplot: no global backend is switched in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_num(cell)}</td>' if isinstance(cell, (int, float))
            else f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _flat(value: Any, prefix: str = "") -> list[list[Any]]:
    """A nested mapping as (key path, value) rows; short lists are joined, long ones counted."""
    if isinstance(value, dict):
        rows = []
        for key, inner in value.items():
            rows += _flat(inner, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list):
        shown = ", ".join(map(str, value[:10])) + (f" … ({len(value)} in all)"
                                                  if len(value) > 10 else "")
        return [[prefix, shown]]
    return [[prefix, value]]


# --- sections every run has -------------------------------------------------------------------


def learning_curves(run_dir: Path, perplexity: bool = False) -> Section:
    """Training loss and the validation figures against steps, from metrics.jsonl."""
    records = _jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return "Learning curves", "<p>metrics.jsonl holds no steps.</p>"
    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], ".-", label="train loss")
    if evals and "val_loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    images = [_img(fig, "loss against steps")]
    tracked = sorted({k for r in evals for k in r} - {"kind", "step", "time", "val_loss"})
    if perplexity and evals and "val_loss" in evals[0]:
        fig = _figure()
        ax = fig.add_subplot()
        ax.plot([r["step"] for r in evals], [math.exp(min(r["val_loss"], 50)) for r in evals],
                "o-")
        ax.set_xlabel("step")
        ax.set_ylabel("val perplexity")
        images.append(_img(fig, "validation perplexity against steps"))
        tracked = [k for k in tracked if "perplexity" not in k]
    if tracked:
        fig = _figure()
        ax = fig.add_subplot()
        for key in tracked:
            points = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*points, strict=True), "o-", label=key)
        ax.set_xlabel("step")
        ax.legend()
        images.append(_img(fig, "validation metrics against steps"))
    return "Learning curves", "".join(images)


def data_section(run_dir: Path) -> Section:
    report = _json(run_dir / "data_report.json")
    if report is None:
        return "Data", "<p>no data_report.json</p>"
    warnings = "".join(f'<p class="warn">{_esc(w)}</p>' for w in report.get("warnings", []))
    rest = {k: v for k, v in report.items() if k not in ("warnings", "examples")}
    return "Data", warnings + _table(["field", "value"], _flat(rest))


def provenance_section(run_dir: Path) -> Section:
    origin = _json(run_dir / "provenance.json")
    if origin is None:
        return "Provenance", "<p>no provenance.json</p>"
    return "Provenance", _table(["field", "value"], _flat(origin))


# --- classification ---------------------------------------------------------------------------


def _probs(rows: list[dict[str, Any]], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, classes) probabilities and the gold class indices of test_predictions.jsonl."""
    probs = np.array([[row["probs"][label] for label in labels] for row in rows])
    gold = np.array([labels.index(row["gold"]) for row in rows])
    return probs, gold


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray,
                               bins: int = RELIABILITY_BINS) -> tuple[float, list[tuple]]:
    """ECE over equal-width confidence bins, and each bin's (confidence, accuracy, count)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        inside = which == b
        if inside.any():
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += inside.mean() * abs(conf - acc)
            table.append((conf, acc, int(inside.sum())))
    return float(ece), table


def _metrics_table(report: dict[str, Any]) -> str:
    keys = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"]
    baselines = report.get("baselines", {})
    intervals = report.get("ci95", {})
    rows = []
    for key in keys:
        if report.get(key) is None:
            continue
        interval = intervals.get(key)
        rows.append([key, report[key], f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval
                     else "—", *[baselines[name].get(key) or "—" for name in baselines]])
    return _table(["metric", "model", "95% interval", *baselines], rows)


def _confusion(report: dict[str, Any]) -> str:
    labels, matrix = report["labels"], np.array(report["confusion_matrix"])
    fig = _figure(1.5 + 0.6 * len(labels), 1.2 + 0.6 * len(labels))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    return _img(fig, "confusion matrix")


def _reliability(probs: np.ndarray, gold: np.ndarray) -> str:
    ece, bins = expected_calibration_error(probs, gold)
    fig = _figure(4.2, 4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([b[0] for b in bins], [b[1] for b in bins], "o-", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {ece:.3f}")
    ax.legend()
    return _img(fig, f"reliability diagram, ECE {ece:.3f}") + f"<p>ECE {ece:.4f}</p>"


def _pr_curves(probs: np.ndarray, gold: np.ndarray, labels: list[str]) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure()
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        if not (gold == i).any():
            continue
        precision, recall, _ = precision_recall_curve(gold == i, probs[:, i])
        ap = average_precision_score(gold == i, probs[:, i])
        ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize="small")
    return _img(fig, "precision-recall curves")


def _worst_errors(rows: list[dict[str, Any]]) -> str:
    wrong = [row for row in rows if row["gold"] != row["predicted"]]
    wrong.sort(key=lambda row: -row["probs"][row["predicted"]])
    table = [[row["text"], row["gold"], row["predicted"], row["probs"][row["predicted"]]]
             for row in wrong[:WORST_ERRORS]]
    if not table:
        return "<p>no errors on the test split.</p>"
    return _table(["text", "gold", "predicted", "confidence"], table)


def _explained_errors(rows: list[dict[str, Any]]) -> str:
    """The worst errors that test_predictions.jsonl explains, their tokens shaded by their
    attribution to the wrong label: green for it, red against it."""
    wrong = [row for row in rows if row["gold"] != row["predicted"] and row.get("attributions")]
    wrong.sort(key=lambda row: -row["probs"][row["predicted"]])
    lines = []
    for row in wrong:
        found = row["attributions"]
        top = max(abs(a["score"]) for a in found) or 1.0
        tokens = " ".join(
            f'<span title="{a["score"]:.4g}" style="background:'
            f'{"rgba(0,150,0," if a["score"] >= 0 else "rgba(200,0,0,"}'
            f'{abs(a["score"]) / top:.2f})">{_esc(a["token"])}</span>' for a in found)
        lines.append(f"<p>{_esc(row['predicted'])} (gold {_esc(row['gold'])}): {tokens}</p>")
    if not lines:
        return ""
    return ("<p>Why: each token shaded by its attribution to the predicted label (green for "
            "it, red against it; the score on hover).</p>" + "".join(lines))


def _slices(report: dict[str, Any]) -> str:
    rows = [[column, value, m["n"], m["accuracy"], m["f1_macro"]]
            for column, values in report["slices"].items() for value, m in values.items()]
    gaps = "".join(
        f"<p>{_esc(column)}: largest accuracy gap {gap['accuracy']['difference']:.3f} "
        f"({_esc(gap['accuracy']['best'])} vs {_esc(gap['accuracy']['worst'])})</p>"
        for column, gap in report.get("slice_gaps", {}).items())
    warns = "".join(f'<p class="warn">{_esc(w)}</p>' for w in report.get("slice_warnings", []))
    return _table(["column", "value", "n", "accuracy", "f1_macro"], rows) + gaps + warns


def classification_sections(run_dir: Path, report: dict[str, Any]) -> list[Section]:
    labels = report["labels"]
    sections = [("Test metrics beside the baselines", _metrics_table(report))]
    per_class = [[label, m["precision"], m["recall"], m["f1"], m["support"]]
                 for label, m in report["per_class"].items()]
    sections.append(("Per class", _table(["label", "precision", "recall", "f1", "support"],
                                         per_class)))
    sections.append(("Confusion matrix", _confusion(report)))
    rows = _jsonl(run_dir / "test_predictions.jsonl")
    if rows:
        probs, gold = _probs(rows, labels)
        sections.append(("Calibration", _reliability(probs, gold)))
        sections.append(("Precision–recall curves", _pr_curves(probs, gold, labels)))
        sections.append(("Worst errors (most confident wrong predictions)",
                         _worst_errors(rows) + _explained_errors(rows)))
    if report.get("slices"):
        sections.append(("Slices", _slices(report)))
    if report.get("leaderboard"):
        sections.append(("Leaderboard", _table(["model", "value"], _flat(report["leaderboard"]))))
    return sections


# --- generation -------------------------------------------------------------------------------


def metrics_sections(run_dir: Path, report: dict[str, Any]) -> list[Section]:
    """Any task's eval.json as a table: the view of a task without views of its own."""
    return [("Test metrics beside the baselines",
             _table(["metric", "value"], _flat({k: v for k, v in report.items()
                                                if k != "samples"})))]


def generation_sections(run_dir: Path, report: dict[str, Any]) -> list[Section]:
    sections = metrics_sections(run_dir, report)
    samples = report.get("samples")
    if samples:
        rows = [[s.get("prompt", ""), s.get("text", s.get("continuation", ""))]
                if isinstance(s, dict) else ["", s] for s in samples]
        sections.append(("Samples", _table(["prompt", "continuation"], rows)))
    return sections


SECTIONS: dict[str, Callable[[Path, dict[str, Any]], list[Section]]] = {
    "classification": classification_sections,
    "generation": generation_sections,
    "metrics": metrics_sections,
}


def write_html_report(run_dir: Path, kind: str, report: dict[str, Any] | None = None) -> Path:
    """Write run_dir/report.html from the run's files; `report` stands in for eval.json (as
    `evaluate` just measured it)."""
    report = report if report is not None else _json(run_dir / "eval.json")
    sections = [learning_curves(run_dir, perplexity=kind == "generation")]
    if report:
        sections += SECTIONS[kind](run_dir, report)
    else:
        sections.append(("Test metrics", "<p>no eval.json: the run had no test split.</p>"))
    sections += [data_section(run_dir), provenance_section(run_dir)]
    nav = "".join(f'<a href="#s{i}">{_esc(title)}</a>' for i, (title, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{_esc(title)}</h2>{content}'
                   for i, (title, content) in enumerate(sections))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>lmforge report: {_esc(run_dir.name)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>lmforge report: {_esc(run_dir.name)} ({_esc(kind)})</h1>"
            f"<nav>{nav}</nav>{body}</body></html>")
    path = run_dir / "report.html"
    write_atomic(path, page)
    return path
