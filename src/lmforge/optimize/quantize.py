"""Dynamic int8 quantization through ONNX Runtime (a PyTorch bundle is exported to ONNX first).

PyTorch's eager int8 (torch.ao) is deprecated and its tensors cannot be stored as safetensors, so
ONNX Runtime is the int8 path. ONNX Runtime's transformer optimizer (fused Attention, LayerNorm
and GELU kernels) is tried too; its graph is kept only if it is faster at batch 1 and batch 32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.files import staged_dir
from lmforge.models.onnx_runtime import OnnxClassifier
from lmforge.optimize.bundles import Source, write_meta
from lmforge.optimize.export import (
    DEFAULT_OPSET,
    ONNX_FILE,
    attention_shape,
    check_note,
    export_verified,
    onnx_meta,
)
from lmforge.optimize.report import (
    LATENCY_BATCHES,
    latency_inputs,
    paired_latency_ms,
    report_on,
)

CHECK_TEXTS = 256  # eval texts on which the fp32 export is checked against PyTorch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer and optimizer log advice and tracer chatter meant for their developers,
    and where shape inference gives up, ONNX Runtime dumps the model (sym_shape_infer_temp.onnx
    and a weights file) into the working directory: they run in a scratch one instead."""
    logging.disable(logging.WARNING)
    before = Path.cwd()
    scratch = tempfile.TemporaryDirectory(prefix="lmforge-onnxruntime-")
    os.chdir(scratch.name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.chdir(before)
        scratch.cleanup()
        logging.disable(logging.NOTSET)


def quantize_int8(fp32: Path, int8: Path, fused: bool = False) -> None:
    """Weights of MatMul and Gather (embeddings) to int8; activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused ops live in the com.microsoft domain, where shape inference cannot type their
    # outputs: tell the quantizer they are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
    source, target = str(fp32.resolve()), str(int8.resolve())  # before _quiet moves the cwd
    with _quiet():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, extra_options=extra)


def fuse_transformer_ops(fp32: Path, fused: Path, attention: dict[str, int]) -> dict[str, int]:
    """ONNX Runtime's BERT-family fusions (Attention needs the head count and hidden size);
    returns the fused operators found (none: nothing to gain)."""
    from onnxruntime.transformers import optimizer

    with _quiet():
        try:
            model = optimizer.optimize_model(
                str(fp32.resolve()), model_type="bert", opt_level=0, **attention
            )
        except Exception:  # a graph it does not know: the plain int8 graph is still there
            return {}
    found = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    if found:
        model.save_model_to_file(str(fused))
    return found


def _keep_fused(source: Source, plain: Path, fused: Path) -> tuple[bool, dict[str, list[float]]]:
    """Whether the fused graph is faster at batch 1 and at batch 32 (it is not always: its
    fused int8 attention can lose to plain int8 matmuls), and the timings [plain, fused]."""
    models = [OnnxClassifier(plain), OnnxClassifier(fused)]
    timings = {}
    for batch in LATENCY_BATCHES:
        inputs = latency_inputs(source.predictor, source.eval_split.texts, batch)
        timings[f"latency_ms_b{batch}"] = paired_latency_ms(models, inputs)
    return all(fused_ms < plain_ms for plain_ms, fused_ms in timings.values()), timings


def _optimizer_note(fused_ops: dict[str, int], timings: dict[str, list[float]], kept: str) -> str:
    if not fused_ops:
        return "ONNX Runtime's transformer optimizer found nothing to fuse: plain int8 graph"
    fused = ", ".join(f"{n} {op}" for op, n in fused_ops.items())
    ms = "; ".join(f"{key[-3:]} {p:.2f} vs {f:.2f} ms" for key, (p, f) in timings.items())
    return (
        f"ONNX Runtime's transformer optimizer fused {fused}; int8 plain vs fused: {ms}; "
        f"kept {kept}"
    )


def quantize_bundle(source: Source, out: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """`lmforge compress --quantize int8`: an int8 ONNX bundle, measured beside the original."""
    if source.is_onnx and source.meta["onnx"].get("weights") == "int8":
        raise LmforgeError(f"{source.bundle_dir} is already quantized to int8")
    details: dict[str, Any] = {}
    with staged_dir(out) as tmp:
        work = tmp / "work"
        work.mkdir()
        if source.is_onnx:
            fp32 = source.bundle_dir / source.meta["onnx"]["file"]
        else:
            fp32 = work / "fp32.onnx"
            texts = source.eval_split.texts[:CHECK_TEXTS]
            details["check"] = export_verified(source, fp32, opset, texts)
        quantize_int8(fp32, work / "plain.onnx")
        attention = source.meta.get("onnx", {}).get("attention") or attention_shape(source)
        fused_ops = fuse_transformer_ops(fp32, work / "fused-fp32.onnx", attention)
        chosen, timings = "plain", {}
        if fused_ops:
            quantize_int8(work / "fused-fp32.onnx", work / "fused.onnx", fused=True)
            faster, timings = _keep_fused(source, work / "plain.onnx", work / "fused.onnx")
            chosen = "fused" if faster else "plain"
        (work / f"{chosen}.onnx").rename(tmp / ONNX_FILE)
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
        details["graph_optimizer"] = {
            "fused_ops": fused_ops,
            "plain_vs_fused_ms": timings,
            "chosen": chosen,
            "threads": torch.get_num_threads(),
        }
        details["notes"] = [
            *([check_note(details["check"])] if "check" in details else []),
            _optimizer_note(fused_ops, timings, chosen),
        ]
        source.predictor.tokenizer.save(tmp)
        onnx_info = {"opset": source.meta.get("onnx", {}).get("opset", opset), "weights": "int8"}
        onnx_info["quantization"] = "dynamic int8 (onnxruntime quantize_dynamic, QInt8 weights)"
        onnx_info["graph_optimizer"] = chosen == "fused"
        onnx_info["attention"] = attention
        write_meta(tmp, onnx_meta(source, "quantize int8", onnx_info))
        return report_on(source, tmp, out, "int8 quantization (ONNX Runtime)", details)
