"""Export an image classification bundle (model.arch cnn) to ONNX, and quantize it to int8, each
checked against PyTorch on held-out images and measured beside the original (compress_report.json),
as text classifiers are. The result is a bundle: its preprocess.json, and "runtime": "onnx"."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.bundle import load, read_meta
from lmforge.data.images import PREPROCESS_FILE, ImageRows
from lmforge.errors import LmforgeError
from lmforge.evaluation import classification_metrics
from lmforge.files import staged_dir, write_json_atomic
from lmforge.models.onnx_runtime import ONNX_OUTPUT, OnnxImageClassifier
from lmforge.optimize.bundles import REPORT_FILE, write_meta
from lmforge.optimize.export import ONNX_FILE, check_same_outputs
from lmforge.optimize.quantize import quantize_int8
from lmforge.optimize.report import (
    LATENCY_BATCHES,
    Measurement,
    build_report,
    bundle_size_mb,
    count_params,
    paired_latency_ms,
)
from lmforge.tasks.images import ImageClassifier, held_out_images

CHECK_IMAGES = 256  # held-out images on which ONNX Runtime is checked against PyTorch


def export_cnn(predictor: ImageClassifier, path: Path, opset: int) -> None:
    """Trace the CNN once with a dynamic batch axis (input "pixels", normalised)."""
    pre = predictor.preprocess
    sample = torch.zeros(2, pre.channels, pre.size, pre.size)
    model = predictor.model.cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (sample,), str(path), input_names=["pixels"],
                              output_names=[ONNX_OUTPUT],
                              dynamic_axes={"pixels": {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as error:  # an opset the exporter cannot handle
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LmforgeError(f"cannot export the CNN to ONNX at opset {opset}: {first}") from None


def _source(bundle_dir: Path, run_dir: Path | None, data: str | Path | None
            ) -> tuple[ImageClassifier, ImageRows, str]:
    meta = read_meta(bundle_dir)
    if meta.get("runtime") == "onnx":
        raise LmforgeError(f"{bundle_dir} is already an ONNX bundle")
    predictor = load(bundle_dir, device="cpu")
    images, name = held_out_images(predictor, run_dir, None if data is None else str(data))
    return predictor, images, name


def _measure(directory: Path, predictor: ImageClassifier, images: ImageRows) -> Measurement:
    logits = predictor.logits(images.images)
    pred = [predictor.labels[i] for i in logits.argmax(1)]
    metrics = classification_metrics(images.labels, pred, predictor.labels)
    return Measurement({"size_mb": round(bundle_size_mb(directory), 3),
                        "params": count_params(predictor.model),
                        "accuracy": metrics["accuracy"], "f1": metrics["f1_macro"]}, logits)


def _write(source: Path, predictor: ImageClassifier, images: ImageRows, name: str,
           staged: Path, out: Path, operation: str, onnx: dict[str, Any],
           details: dict[str, Any]) -> dict[str, Any]:
    """The staged bundle's preprocessing and lmforge.json, then both measured and reported."""
    shutil.copy(source / PREPROCESS_FILE, staged / PREPROCESS_FILE)
    meta = {**predictor.meta, "runtime": "onnx", "onnx": {"file": ONNX_FILE, **onnx},
            "derived_from": {"bundle": str(source.resolve()), "operation": operation}}
    write_meta(staged, meta)
    result = load(staged, device="cpu")
    original, measured = _measure(source, predictor, images), _measure(staged, result, images)
    pre = predictor.preprocess
    for batch in LATENCY_BATCHES:
        pixels = {"pixels": torch.zeros(batch, pre.channels, pre.size, pre.size)}
        ms = paired_latency_ms([predictor.model, result.model], pixels)
        original.figures[f"latency_ms_b{batch}"], measured.figures[f"latency_ms_b{batch}"] = ms
    meta["metrics"] = {"n": len(images.names), "accuracy": measured.figures["accuracy"],
                       "f1_macro": measured.figures["f1"], "data": name}
    write_meta(staged, meta)
    report = build_report(operation, source, original, out, measured, name, details)
    write_json_atomic(staged / REPORT_FILE, report)
    return report


def export_image_bundle(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
                        data: str | Path | None = None) -> dict[str, Any]:
    """`lmforge export --format onnx` of an image bundle: fp32, checked against PyTorch."""
    predictor, images, name = _source(bundle_dir, run_dir, data)
    with staged_dir(out) as tmp:
        export_cnn(predictor, tmp / ONNX_FILE, opset)
        check = _check(predictor, tmp / ONNX_FILE, images, name)
        return _write(bundle_dir, predictor, images, name, tmp, out, "export to ONNX",
                      {"opset": opset, "weights": "fp32"},
                      {"check": check, "notes": [_note(check)]})


def quantize_image_bundle(bundle_dir: Path, run_dir: Path | None, out: Path, opset: int,
                          data: str | Path | None = None) -> dict[str, Any]:
    """`lmforge compress --quantize int8` of an image bundle: the fp32 export checked, then its
    weights to int8 by ONNX Runtime's dynamic quantization."""
    predictor, images, name = _source(bundle_dir, run_dir, data)
    with staged_dir(out) as tmp:
        fp32 = tmp / "fp32.onnx"
        export_cnn(predictor, fp32, opset)
        check = _check(predictor, fp32, images, name)
        quantize_int8(fp32, tmp / ONNX_FILE)
        fp32.unlink()
        onnx = {"opset": opset, "weights": "int8",
                "quantization": "dynamic int8 (onnxruntime quantize_dynamic, QInt8 weights)"}
        return _write(bundle_dir, predictor, images, name, tmp, out, "quantize int8", onnx,
                      {"check": check, "notes": [_note(check)]})


def _check(predictor: ImageClassifier, path: Path, images: ImageRows, name: str
           ) -> dict[str, Any]:
    chosen = images.images[:CHECK_IMAGES]
    onnx = ImageClassifier(OnnxImageClassifier(path), predictor.preprocess, predictor.meta)
    reference = predictor.logits(chosen)
    return check_same_outputs(reference, np.asarray(onnx.logits(chosen)),
                              f"{len(chosen)} images of {name}")


def _note(check: dict[str, Any]) -> str:
    return (f"ONNX Runtime vs PyTorch (fp32) on {check['texts']} images: max |logit difference| "
            f"{check['max_abs_logit_diff']:.1e}, {check['labels_differ']} labels differ")
