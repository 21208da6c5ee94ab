"""Export a feature table's MLP bundle to ONNX (fp32, or int8 weights through ONNX Runtime's
dynamic quantization), checked against PyTorch on the run's test rows before it is written.

The result is a bundle like the original (features.json, lmforge.json with "runtime": "onnx"),
so predict, evaluate and serve run it unchanged.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lmforge.bundle import META_FILE, load, read_meta
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir, write_json_atomic
from lmforge.optimize.bundles import REPORT_FILE
from lmforge.optimize.export import MAX_ABS_DIFF, ONNX_FILE
from lmforge.optimize.quantize import quantize_int8
from lmforge.tasks import recipe_of
from lmforge.tasks.tabular import ONNX_FEATURES, OnnxTableModel, TablePredictor, model_outputs
from lmforge.version import __version__

ONNX_OUTPUT = "logits"
CHECK_ROWS = 256  # synthetic rows checked when the run's test rows are gone


def check_rows(predictor: TablePredictor, run_dir: Path | None) -> tuple[np.ndarray, str]:
    """Encoded rows to compare the runtimes on: the run's test split, else synthetic rows
    (standard-normal numbers, random indicators and category ids, fixed seed)."""
    recipe = recipe_of(predictor.meta)
    if run_dir is not None:
        try:
            run = recipe.evaluate_rows(run_dir, predictor.meta)
        except LmforgeError:
            run = None
        if run is not None and run.cells:
            return predictor.schema.encode(run.cells), f"test split of {run_dir}"
    schema, rng = predictor.schema, np.random.default_rng(0)
    x = np.zeros((CHECK_ROWS, schema.width), dtype=np.float32)
    x[:, :len(schema.numbers)] = rng.normal(size=(CHECK_ROWS, len(schema.numbers)))
    x[:, len(schema.numbers):schema.n_numeric_inputs] = rng.integers(
        0, 2, size=(CHECK_ROWS, schema.n_numeric_inputs - len(schema.numbers)))
    for j, size in enumerate(schema.cardinalities):
        x[:, schema.n_numeric_inputs + j] = rng.integers(0, size, size=CHECK_ROWS)
    return x, f"{CHECK_ROWS} synthetic rows"


def export_mlp(model: torch.nn.Module, width: int, path: Path, opset: int) -> None:
    sample = torch.zeros((2, width), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.cpu().eval(), (sample,), str(path),
                              input_names=[ONNX_FEATURES], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_FEATURES: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LmforgeError(f"cannot export the MLP to ONNX at opset {opset}: {first}") \
                from None


def compare(reference: np.ndarray, other: np.ndarray, regression: bool) -> dict[str, Any]:
    """Max |output difference| and, for a classifier, how many predicted labels differ."""
    diff = float(np.abs(reference - other).max()) if len(reference) else 0.0
    differ = 0 if regression else int((reference.argmax(1) != other.argmax(1)).sum())
    return {"max_abs_output_diff": diff, "labels_differ": differ, "rows": len(reference)}


def latency_ms(model: Any, x: Any, repeats: int = 20,
               run: Callable[[Any, Any], Any] = model_outputs) -> float:
    """Median milliseconds of one call `run(model, x)`."""
    run(model, x)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(model, x)
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def export_table_bundle(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
                        int8: bool = False) -> dict[str, Any]:
    """`lmforge export --format onnx` (fp32) or `lmforge compress --quantize int8` of a table
    bundle: the ONNX model checked against PyTorch (fp32 must agree to MAX_ABS_DIFF and on
    every label; int8's differences are measured and reported), written as a bundle."""
    predictor = load(bundle_dir)
    meta = read_meta(bundle_dir)
    if meta.get("runtime") == "onnx":
        raise LmforgeError(f"{bundle_dir} is already an ONNX bundle")
    regression = predictor.labels is None
    x, where = check_rows(predictor, run_dir)
    reference = model_outputs(predictor.model, x)
    with staged_dir(out) as tmp:
        fp32 = tmp / ONNX_FILE
        export_mlp(predictor.model, predictor.schema.width, fp32, opset)
        check = refuse_disagreement(
            compare(reference, model_outputs(OnnxTableModel(fp32), x), regression), where)
        report: dict[str, Any] = {"operation": "quantize int8" if int8 else "export to ONNX",
                                  "checked_on": where, "fp32_check": check}
        if int8:
            quantize_in_place(fp32)
            report["int8_vs_pytorch"] = compare(reference, model_outputs(OnnxTableModel(fp32), x),
                                                regression)
        runtime = OnnxTableModel(fp32)
        report["latency_ms_batch_256"] = {
            "pytorch": latency_ms(predictor.model, x[:256]),
            "onnx": latency_ms(runtime, x[:256])}
        report["size_mb"] = {"pytorch": (bundle_dir / "model.safetensors").stat().st_size / 1e6,
                             "onnx": fp32.stat().st_size / 1e6}
        predictor.schema.save(tmp)
        write_onnx_meta(tmp, meta, bundle_dir, opset, int8, report)
    report["result"] = str(out)
    return report


def quantize_in_place(fp32: Path) -> None:
    """The ONNX model at `fp32` replaced by its int8 quantization."""
    quantized = fp32.with_name("model.int8.onnx")
    quantize_int8(fp32, quantized)
    quantized.replace(fp32)


def refuse_disagreement(check: dict[str, Any], where: str) -> dict[str, Any]:
    """`check` (compare's), or an error when the fp32 export is not PyTorch's model."""
    if check["max_abs_output_diff"] > MAX_ABS_DIFF or check["labels_differ"]:
        raise LmforgeError(
            f"ONNX Runtime disagrees with PyTorch on {where}: max |output difference| "
            f"{check['max_abs_output_diff']:.2e} (allowed {MAX_ABS_DIFF:.0e}), "
            f"{check['labels_differ']} labels differ; nothing was written")
    return check


def write_onnx_meta(tmp: Path, meta: dict[str, Any], bundle_dir: Path, opset: int, int8: bool,
                    report: dict[str, Any]) -> None:
    """An exported bundle's lmforge.json (the source's, run by ONNX Runtime) and its report."""
    write_json_atomic(tmp / META_FILE, {
        **meta, "lmforge_version": __version__, "runtime": "onnx",
        "onnx": {"file": ONNX_FILE, "opset": opset, "weights": "int8" if int8 else "fp32"},
        "derived_from": {"bundle": str(bundle_dir.resolve()),
                         "operation": "quantize" if int8 else "export"}})
    write_json_atomic(tmp / REPORT_FILE, report)


def render_table_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{report['operation']}: checked on {report['checked_on']}")
    for column in ("", "PyTorch", "ONNX Runtime"):
        table.add_column(column, justify="left" if not column else "right")
    latency, size = report["latency_ms_batch_256"], report["size_mb"]
    table.add_row("ms per call (up to 256 rows)", f"{latency['pytorch']:.3f}",
                  f"{latency['onnx']:.3f}")
    table.add_row("size (MB)", f"{size['pytorch']:.3f}", f"{size['onnx']:.3f}")
    console.print(table)
    for name in ("fp32_check", "int8_vs_pytorch"):
        if name in report:
            found = report[name]
            console.print(f"{name.replace('_', ' ')}: max |output difference| "
                          f"{found['max_abs_output_diff']:.1e} on {found['rows']} rows, "
                          f"{found['labels_differ']} labels differ", markup=False)
    console.print(f"bundle written to {report['result']}", markup=False)
