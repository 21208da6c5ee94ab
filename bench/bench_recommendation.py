"""The recommendation quickstart (MovieLens-100K, a config that sets only task and data) beside
its baselines: test hr@10, ndcg@10 and MRR over all items with their 95% intervals, popularity
and item-kNN on the same split, the ratio of the model's NDCG@10 to popularity's (the goal:
at least 1.5) and the training time. --arch mf runs matrix factorization instead.

    OMP_NUM_THREADS=2 python bench/bench_recommendation.py [--arch mf] [--set train.epochs=10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lmforge
from lmforge.pipeline import quickstart_config

METRICS = ("hr@10", "ndcg@10", "mrr")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=["sasrec", "mf"], default="sasrec")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    # the quickstart's config (task and data only), with the model named
    config = {"task": "recommendation", "data": {"path": "builtin:ml-100k"},
              "model": {"arch": args.arch}}
    assert quickstart_config(task="recommendation").data.path == config["data"]["path"]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = lmforge.train(config, out=Path(tmp) / "run", overrides=args.overrides,
                               show_progress=False)
        seconds = time.perf_counter() - started
    report = result.eval_report
    rows = [(args.arch, report), *report["baselines"].items()]
    print(f"\nbuiltin:ml-100k: {report['n']} users, ranked over all {report['items']} items; "
          f"{result.steps} steps, {seconds:.0f} s (data, training, evaluation, bundle)")
    print(f"  {'':12s}" + "".join(f"{m:>26s}" for m in METRICS))
    for name, figures in rows:
        cells = "".join(f"{figures[m]:10.4f} [{figures[m + '_ci95'][0]:.4f}, "
                        f"{figures[m + '_ci95'][1]:.4f}]" for m in METRICS)
        print(f"  {name:12s}{cells}")
    for name, figures in report["baselines"].items():
        print(f"  ndcg@10 {args.arch} / {name}: {report['ndcg@10'] / figures['ndcg@10']:.2f}x")


if __name__ == "__main__":
    main()
