"""The MLP on scikit-learn's built-in tables beside its baselines, at the defaults of a config
that sets only task, data and arch: test accuracy (classification) or RMSE and R² (regression)
and train time, averaged over several splits (data.split.seed), since the test splits are small.

    OMP_NUM_THREADS=1 python bench/bench_tabular.py [--seeds 5] [--set model.dropout=0.1 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lmforge

TABLES = {"builtin:breast_cancer": "classification", "builtin:wine": "classification",
          "builtin:diabetes": "regression"}


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
            runs = [one_run(data, task, seed, args.overrides, Path(tmp) / f"{seed}")
                    for seed in range(args.first_seed, args.first_seed + args.seeds)]
            print(f"\n{data} ({task}, {args.seeds} splits; mean, and the min..max over splits)")
            for key in runs[0]:
                values = [run[key] for run in runs]
                print(f"  {key:36s} {statistics.mean(values):8.4f}   "
                      f"({min(values):.4f} .. {max(values):.4f})")
            key = "r2" if task == "regression" else "accuracy"
            other = "ridge" if task == "regression" else "hist_gradient_boosting"
            gap = statistics.mean(r[f"mlp {key}"] - r[f"{other} {key}"] for r in runs)
            print(f"  mlp - {other} ({key}): {gap:+.4f}")


if __name__ == "__main__":
    main()
