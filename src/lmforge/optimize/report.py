"""What a compression cost and bought, measured: size, parameters, CPU latency, accuracy, F1 of
the original and the result on the same split, written to compress_report.json and one table."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from lmforge.bundle import Predictor, load, read_meta
from lmforge.data import Split
from lmforge.evaluation import classification_metrics
from lmforge.files import write_json_atomic
from lmforge.models.onnx_runtime import OnnxClassifier
from lmforge.optimize.bundles import REPORT_FILE, Source, write_meta
from lmforge.tasks.classification import pad_batch

LATENCY_BATCHES = (1, 32)


@dataclass
class Measurement:
    figures: dict[str, Any]  # size_mb, params, latency_ms_b1, latency_ms_b32, accuracy, f1
    logits: np.ndarray  # (n, classes) on the eval split, for comparing two models text by text


def bundle_size_mb(directory: Path) -> float:
    """Every file of the bundle folder (not its compress_report.json), in MB (10^6 bytes)."""
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != REPORT_FILE]
    return sum(p.stat().st_size for p in files) / 1e6


def count_params(model: nn.Module) -> int:
    if isinstance(model, OnnxClassifier):
        return onnx_param_count(model.path)
    return sum(p.numel() for p in model.parameters())


def onnx_param_count(path: Path) -> int:
    """Weights of an ONNX graph: its float and 8-bit initializers that are not scalars (an int8
    weight counts once; its scale and zero point, and int64 shape constants, do not)."""
    import onnx

    counted = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8}
    counted.add(onnx.TensorProto.UINT8)
    graph = onnx.load(str(path)).graph
    return sum(
        int(np.prod(t.dims)) for t in graph.initializer if t.data_type in counted and len(t.dims)
    )


def latency_inputs(predictor: Predictor, texts: list[str], batch: int) -> dict[str, torch.Tensor]:
    """`batch` eval texts of about median length (cycled if there are fewer), padded as served."""
    ids = predictor.encode(texts).ids
    order = np.argsort([len(x) for x in ids], kind="stable")
    start = max(0, len(order) // 2 - batch // 2)
    chosen = [ids[order[(start + i) % len(order)]] for i in range(batch)]
    return pad_batch(chosen, predictor.tokenizer.pad_id)


def _timed(model: nn.Module) -> nn.Module:
    if isinstance(model, OnnxClassifier):  # a session with the same thread count as torch
        return type(model)(model.path, threads=torch.get_num_threads())
    return model.eval()


def paired_latency_ms(
    models: list[nn.Module],
    inputs: dict[str, torch.Tensor],
    min_rounds: int = 4,
    budget_s: float = 1.0,
    block: int = 5,
) -> list[float]:
    """Median forward-pass time of each model (tokenization costs all of them the same).

    The models take turns in blocks of `block` timed calls, so that load from other processes
    falls on all of them alike; each block starts with an untimed call, which pays for the
    previous model's thread pool still spinning."""
    runners = [_timed(model) for model in models]
    args = tuple(inputs.values())  # input_ids and attention_mask, or an image model's pixels
    times: list[list[float]] = [[] for _ in runners]
    with torch.inference_mode():
        started, rounds = time.perf_counter(), 0
        while rounds < min_rounds or (time.perf_counter() - started < budget_s and rounds < 40):
            for model, bucket in zip(runners, times, strict=True):
                model(*args)
                for _ in range(block):
                    t0 = time.perf_counter()
                    model(*args)
                    bucket.append(time.perf_counter() - t0)
            rounds += 1
    return [round(1000 * statistics.median(bucket), 3) for bucket in times]


def latencies(predictor: Predictor, models: list[nn.Module], texts: list[str]) -> list[dict]:
    """latency_ms_b1 and latency_ms_b32 of each model on the same inputs."""
    out: list[dict[str, float]] = [{} for _ in models]
    for batch in LATENCY_BATCHES:
        inputs = latency_inputs(predictor, texts, batch)
        for figures, ms in zip(out, paired_latency_ms(models, inputs), strict=True):
            figures[f"latency_ms_b{batch}"] = ms
    return out


def measure(
    directory: Path, predictor: Predictor, split: Split, logits: np.ndarray | None = None
) -> Measurement:
    """Size, parameters, accuracy and F1 of one bundle; `logits` on `split` if already known."""
    if logits is None:
        logits, _ = predictor.logits(split.texts)
    pred = [predictor.labels[i] for i in logits.argmax(axis=1)]
    metrics = classification_metrics(split.labels, pred, predictor.labels)
    figures: dict[str, Any] = {
        "size_mb": round(bundle_size_mb(directory), 3),
        "params": count_params(predictor.model),
        "accuracy": metrics["accuracy"],
        "f1": metrics["f1_macro"],
    }
    return Measurement(figures, logits)


def build_report(
    operation: str,
    original_dir: Path,
    original: Measurement,
    result_dir: Path,
    result: Measurement,
    eval_name: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    agree = float((original.logits.argmax(1) == result.logits.argmax(1)).mean())
    return {
        "operation": operation,
        "original": {"bundle": str(original_dir), **original.figures},
        "result": {"bundle": str(result_dir), **result.figures},
        "eval": {"data": eval_name, "n": len(original.logits), "label_agreement": agree},
        "threads": torch.get_num_threads(),
        "latency": "median forward-pass time on the CPU, eval texts of median length",
        **details,
    }


def report_on(
    source: Source, result_dir: Path, out: Path, operation: str, details: dict[str, Any]
) -> dict[str, Any]:
    """Measure the original and the bundle staged in `result_dir` (to become `out`) on the same
    split, record the result's metrics in its lmforge.json, and write compress_report.json."""
    result_predictor = load(result_dir, device="cpu")
    split = source.eval_split
    original = measure(source.bundle_dir, source.predictor, split, source.logits(split.texts))
    result = measure(result_dir, result_predictor, split)
    models = [source.predictor.model, result_predictor.model]
    timed = latencies(source.predictor, models, split.texts)
    original.figures.update(timed[0])
    result.figures.update(timed[1])
    meta = read_meta(result_dir)
    meta["metrics"] = {
        "n": len(split.texts),
        "accuracy": result.figures["accuracy"],
        "f1_macro": result.figures["f1"],
        "data": source.eval_name,
    }
    write_meta(result_dir, meta)
    report = build_report(
        operation, source.bundle_dir, original, out, result, source.eval_name, details
    )
    write_json_atomic(result_dir / REPORT_FILE, report)
    return report


def _ratio(before: float, after: float, smaller: str, larger: str) -> str:
    if not before or not after:
        return ""
    if after <= before:
        return f"{before / after:.2f}× {smaller}"
    return f"{after / before:.2f}× {larger}"


# (row name, key, format, words for a smaller / larger result)
_SIZE_ROWS = [
    ("size (MB)", "size_mb", "{:.2f}", "smaller", "larger"),
    ("parameters", "params", "{:,}", "fewer", "more"),
    ("latency batch 1 (ms)", "latency_ms_b1", "{:.2f}", "faster", "slower"),
    ("latency batch 32 (ms)", "latency_ms_b32", "{:.2f}", "faster", "slower"),
]
_QUALITY_ROWS = [("accuracy", "accuracy"), ("F1 (macro)", "f1")]


def _rows(original: dict[str, Any], result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, key, fmt, smaller, larger in _SIZE_ROWS:
        change = _ratio(original[key], result[key], smaller, larger)
        rows.append((name, fmt.format(original[key]), fmt.format(result[key]), change))
    for name, key in _QUALITY_ROWS:
        change = f"{100 * (result[key] - original[key]):+.2f} pts"
        rows.append((name, f"{original[key]:.4f}", f"{result[key]:.4f}", change))
    return rows


def render_report(report: dict[str, Any], console: Console) -> None:
    """Original beside result, one row per figure."""
    ev = report["eval"]
    table = Table(
        title=f"{report['operation']} on {ev['data']} (n={ev['n']}, {report['threads']} threads)"
    )
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("result", justify="right")
    table.add_column("change", justify="right")
    for row in _rows(report["original"], report["result"]):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for note in report.get("notes", []):
        console.print(note, markup=False)
    console.print(
        f"same label as the original on {ev['label_agreement']:.2%} of texts; "
        f"result in {report['result']['bundle']}",
        markup=False,
    )
