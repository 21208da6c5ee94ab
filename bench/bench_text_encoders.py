"""The text encoders on one split: lmforge's Transformer encoder, the RNN (bidirectional LSTM) and
the TextCNN, each trained on the built-in review corpus with every knob at its default but the
step budget (the same for all three), beside TF-IDF + logistic regression and the majority class
(eval.json's baselines, fitted on the same training split). Prints test accuracy, macro-F1 and
train time per model.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_text_encoders.py [--steps 600]
        [--archs rnn textcnn] [--set train.lr=2e-3 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lmforge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--archs", nargs="+", default=["transformer", "rnn", "textcnn"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override for every model, as `lmforge train --set`")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-text-encoders-"))
    baselines = None
    for arch in args.archs:
        config = {"task": "classification", "model": {"arch": arch},
                  "train": {"max_steps": args.steps}}
        started = time.perf_counter()
        result = lmforge.train(config, out=out / arch, overrides=args.overrides,
                               show_progress=False, force=True)
        seconds = time.perf_counter() - started
        report = result.eval_report
        lo, hi = report["ci95"]["accuracy"]
        print(f"{arch}: accuracy {report['accuracy']:.4f} [{lo:.4f}, {hi:.4f}], f1_macro "
              f"{report['f1_macro']:.4f}; {args.steps} steps, {seconds:.0f} s (n={report['n']})")
        baselines = report["baselines"]
    for name, figures in (baselines or {}).items():
        print(f"{name}: accuracy {figures['accuracy']:.4f}, f1_macro {figures['f1_macro']:.4f}")


if __name__ == "__main__":
    main()
