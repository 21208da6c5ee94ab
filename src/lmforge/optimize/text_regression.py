"""Export a text regression bundle to ONNX (fp32, or int8 weights through ONNX Runtime's dynamic
quantization): the text classifiers' graph (input ids and attention mask in, the one output
out), checked against PyTorch on the run's test texts (or --data) before it is written.

The result is a bundle like the original (tokenizer, lmforge.json with "runtime": "onnx"), so
predict, evaluate and serve run it unchanged; its report reads as a feature table's export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.bundle import load, read_meta
from lmforge.data.prepare import read_texts
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir
from lmforge.models.onnx_runtime import OnnxClassifier
from lmforge.optimize.export import ONNX_FILE, export_onnx, sample_inputs
from lmforge.optimize.tables import (
    compare,
    latency_ms,
    quantize_in_place,
    refuse_disagreement,
    write_onnx_meta,
)
from lmforge.tasks.classification import evaluation_split
from lmforge.tasks.text_regression import TextRegressor

CHECK_TEXTS = 256  # texts compared at most


def check_texts(predictor: TextRegressor, bundle_dir: Path, run_dir: Path | None,
                data: str | Path | None) -> tuple[list[str], str]:
    """The texts to compare the runtimes on: those of `data`, else the run's test split."""
    if data is not None:
        texts, _ = read_texts(str(data), predictor.meta["text_column"])
        where = str(data)
    elif run_dir is not None:
        texts = evaluation_split(predictor.meta, bundle_dir, run_dir, None)[0].texts
        where = f"test split of {run_dir}"
    else:
        raise LmforgeError("the bundle's run directory is gone: pass --data FILE with texts to "
                           "check the export on")
    if not texts:
        raise LmforgeError(f"{where} has no text to check the export on; pass --data FILE")
    return texts[:CHECK_TEXTS], where


def outputs_of(predictor: TextRegressor, texts: list[str]) -> Any:
    return predictor.outputs(texts)[0]


def export_text_regression_bundle(bundle_dir: Path, run_dir: Path | None, out: Path,
                                  opset: int, data: str | Path | None,
                                  int8: bool = False) -> dict[str, Any]:
    """`lmforge export --format onnx` (fp32) or `lmforge compress --quantize int8`: the model
    traced as the text classifiers are, fp32 agreeing with PyTorch to MAX_ABS_DIFF (int8's
    differences measured and reported), written as a bundle."""
    meta = read_meta(bundle_dir)
    if meta.get("runtime") == "onnx":
        raise LmforgeError(f"{bundle_dir} is already an ONNX bundle")
    predictor = load(bundle_dir, device="cpu")
    texts, where = check_texts(predictor, bundle_dir, run_dir, data)
    reference = outputs_of(predictor, texts)
    with staged_dir(out) as tmp:
        fp32 = tmp / ONNX_FILE
        export_onnx(predictor.model, sample_inputs(predictor, texts), fp32, opset)

        def exported() -> TextRegressor:
            return TextRegressor(OnnxClassifier(fp32), predictor.tokenizer, meta)

        check = refuse_disagreement(
            compare(reference, outputs_of(exported(), texts), regression=True), where)
        report: dict[str, Any] = {"operation": "quantize int8" if int8 else "export to ONNX",
                                  "checked_on": where, "fp32_check": check}
        if int8:
            quantize_in_place(fp32)
            report["int8_vs_pytorch"] = compare(reference, outputs_of(exported(), texts), True)
        report["latency_ms_batch_256"] = {
            "pytorch": latency_ms(predictor, texts, run=outputs_of),
            "onnx": latency_ms(exported(), texts, run=outputs_of)}
        weights = sum(path.stat().st_size for path in bundle_dir.glob("*.safetensors"))
        report["size_mb"] = {"pytorch": weights / 1e6, "onnx": fp32.stat().st_size / 1e6}
        predictor.tokenizer.save(tmp)
        write_onnx_meta(tmp, meta, bundle_dir, opset, int8, report)
    report["result"] = str(out)
    return report
