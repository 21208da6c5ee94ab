"""The MLP on scikit-learn's built-in tables beside its baselines, at the defaults of a config
that sets only task, data and arch: test accuracy (classification) or RMSE and R² (regression)
and train time, averaged over several splits (data.split.seed), since the test splits are small.
Three synthetic regression tables check that no default is tuned to diabetes alone: a linear
one with noise, Friedman #1 (nonlinear, with five features that are noise) and one whose target
depends on a category column (its effect, and its interaction with a number).

    OMP_NUM_THREADS=1 python bench/bench_tabular.py [--seeds 5] [--tables synthetic:linear ...]
        [--set model.dropout=0.1 ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import lmforge

SYNTHETIC_ROWS = 500


def linear_table(rng: np.random.Generator) -> tuple[list[str], list[list]]:
    """y = x·w + noise over 8 numbers (the noise is a third of y's spread)."""
    x = rng.normal(size=(SYNTHETIC_ROWS, 8))
    y = x @ rng.normal(size=8) + rng.normal(scale=1.0, size=SYNTHETIC_ROWS)
    return [*(f"x{i}" for i in range(8)), "label"], [[*r, t] for r, t in zip(x, y, strict=True)]


def friedman_table(rng: np.random.Generator) -> tuple[list[str], list[list]]:
    """scikit-learn's Friedman #1: 10 uniform numbers, 5 of them noise, noise sd 1."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(SYNTHETIC_ROWS, n_features=10, noise=1.0,
                          random_state=int(rng.integers(2**31)))
    return [*(f"x{i}" for i in range(10)), "label"], [[*r, t] for r, t in zip(x, y, strict=True)]


def category_table(rng: np.random.Generator) -> tuple[list[str], list[list]]:
    """Three numbers and a 12-level category: the category shifts y and sets the slope of x0."""
    levels = [f"c{i}" for i in range(12)]
    shift, slope = rng.normal(scale=1.5, size=12), rng.normal(size=12)
    x = rng.normal(size=(SYNTHETIC_ROWS, 3))
    c = rng.integers(12, size=SYNTHETIC_ROWS)
    y = shift[c] + slope[c] * x[:, 0] + x[:, 1] - 0.5 * x[:, 2] + rng.normal(
        scale=0.5, size=SYNTHETIC_ROWS)
    return ["x0", "x1", "x2", "group", "label"], [[*r, levels[k], t] for r, k, t in
                                                  zip(x, c, y, strict=True)]


SYNTHETIC = {"synthetic:linear": linear_table, "synthetic:friedman1": friedman_table,
             "synthetic:category": category_table}
TABLES = {"builtin:breast_cancer": "classification", "builtin:wine": "classification",
          "builtin:diabetes": "regression", **dict.fromkeys(SYNTHETIC, "regression")}


def table_path(data: str, folder: Path) -> str:
    """A built-in table's name, or a synthetic table written as a CSV (fixed content)."""
    if data not in SYNTHETIC:
        return data
    header, rows = SYNTHETIC[data](np.random.default_rng(1234))
    path = folder / f"{data.split(':')[1]}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def one_run(data: str, task: str, seed: int, overrides: list[str], out: Path) -> dict:
    config = {"task": task, "data": {"path": data, "split": {"seed": seed}},
              "model": {"arch": "mlp"}}
    started = time.perf_counter()
    result = lmforge.train(config, out=out, overrides=overrides, show_progress=False, force=True)
    seconds = time.perf_counter() - started
    report = json.loads((result.run_dir / "eval.json").read_text())
    keys = ("rmse", "r2") if task == "regression" else ("accuracy",)
    figures = {"seconds": seconds, **{f"mlp {k}": report[k] for k in keys}}
    for name, baseline in report["baselines"].items():
        figures |= {f"{name} {k}": baseline[k] for k in keys}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="data.split.seed of the first")
    parser.add_argument("--tables", nargs="*", default=list(TABLES))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.tables:
            task = TABLES[data]
            path = table_path(data, Path(tmp))
            runs = [one_run(path, task, seed, args.overrides, Path(tmp) / f"{seed}")
                    for seed in range(args.first_seed, args.first_seed + args.seeds)]
            print(f"\n{data} ({task}, {args.seeds} splits; mean, and the min..max over splits)")
            for key in runs[0]:
                values = [run[key] for run in runs]
                print(f"  {key:36s} {statistics.mean(values):8.4f}   "
                      f"({min(values):.4f} .. {max(values):.4f})")
            key = "r2" if task == "regression" else "accuracy"
            others = ("ridge", "hist_gradient_boosting") if task == "regression" else \
                ("hist_gradient_boosting",)
            for other in others:
                gap = statistics.mean(r[f"mlp {key}"] - r[f"{other} {key}"] for r in runs)
                print(f"  mlp - {other} ({key}): {gap:+.4f}")


if __name__ == "__main__":
    main()
