"""Text regression at the defaults of a config that sets only task, data (and arch for rnn and
textcnn): R², RMSE and MAE on the test split beside the training mean and TF-IDF ridge, and train
time. The data: builtin:hsk-levels, the 4,354 graded Chinese sentences of the
`hsk-sentences-audio` package (CC BY-SA), read from the installed package at run time; the
target is each sentence's HSK level (1-6), a number to predict from the sentence alone
(difficulty estimation).

    OMP_NUM_THREADS=2 python bench/bench_text_regression.py [--archs transformer rnn textcnn]
        [--set train.epochs=5 ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lmforge
from lmforge.data.builtin import BUILTIN_HSK_LEVELS


def one_run(arch: str, overrides: list[str], out: Path) -> dict:
    config = {"task": "regression", "data": {"path": BUILTIN_HSK_LEVELS}}
    if arch != "transformer":
        config["model"] = {"arch": arch}
    started = time.perf_counter()
    result = lmforge.train(config, out=out, overrides=overrides, show_progress=False, force=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **json.loads((result.run_dir / "eval.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", nargs="*", default=["transformer", "rnn", "textcnn"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            report = one_run(arch, args.overrides, Path(tmp) / arch)
            print(f"\n{arch}: n={report['n']} test sentences, trained in "
                  f"{report['seconds']:.0f} s")
            rows = {arch: report, **report["baselines"]}
            for name, row in rows.items():
                ci = row.get("ci95", {}).get("r2") or [float("nan")] * 2
                print(f"  {name:12s} r2 {row['r2']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]  rmse "
                      f"{row['rmse']:.4f}  mae {row['mae']:.4f}")
            ridge = report["baselines"]["tfidf_ridge"]
            print(f"  {arch} - tfidf_ridge: r2 {report['r2'] - ridge['r2']:+.4f}, rmse ratio "
                  f"{report['rmse'] / ridge['rmse']:.3f}")


if __name__ == "__main__":
    main()
