"""Images on this machine's CPU: the digits quickstart (scikit-learn's 8x8 digits, a config that
sets only task, data and model.arch cnn, every other knob at its default) beside its baselines,
majority class and logistic regression on the pixels, fitted on the same training split and
scored on the same test split. Goal: the CNN at least 5 points of accuracy above pixel logistic
regression. Also the int8 export's size, latency and accuracy beside the fp32 model.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_images.py [--out runs/bench-digits]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lmforge
from lmforge import pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="the run directory (kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-images-")) / "digits"
    config = {"task": "classification", "data": {"path": "builtin:digits"},
              "model": {"arch": "cnn"}, "train": {"seed": args.seed}}
    started = time.perf_counter()
    result = lmforge.train(config, out=out, show_progress=False)
    seconds = time.perf_counter() - started
    report = result.eval_report
    cnn, base = report["accuracy"], report["baselines"]
    pixel, majority = base["pixel_logreg"]["accuracy"], base["majority"]["accuracy"]
    lo, hi = report["ci95"]["accuracy"]
    gap = report["vs_pixel_logreg"]["accuracy"]
    print(f"digits test split n={report['n']}, seed {args.seed}; {result.steps} steps in "
          f"{seconds:.0f} s (train, test and baselines)")
    print(f"accuracy: cnn {cnn:.4f} [{lo:.4f}, {hi:.4f}], pixel_logreg {pixel:.4f}, "
          f"majority {majority:.4f}")
    print(f"cnn - pixel_logreg: {100 * gap['difference']:+.2f} points "
          f"[{100 * gap['ci95'][0]:+.2f}, {100 * gap['ci95'][1]:+.2f}]; goal +5: "
          f"{'met' if 100 * (cnn - pixel) >= 5 else 'not met'}")
    quantized = pipeline.compress(result.bundle_dir, quantize="int8",
                                  out=out.parent / "digits-int8", force=True)
    original, int8 = quantized["original"], quantized["result"]
    print(f"int8 ONNX: size {original['size_mb']:.3f} -> {int8['size_mb']:.3f} MB, batch-1 "
          f"latency {original['latency_ms_b1']:.3f} -> {int8['latency_ms_b1']:.3f} ms, accuracy "
          f"{original['accuracy']:.4f} -> {int8['accuracy']:.4f}")


if __name__ == "__main__":
    main()
