"""Export a classification bundle to ONNX, and check ONNX Runtime against PyTorch before saying so.

The exported folder is a bundle: lmforge.json gets `"runtime": "onnx"`, and `lmforge.load()` runs
model.onnx through ONNX Runtime with the same cleaning and tokenizer as the original.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.bundle import Predictor
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir
from lmforge.models import PretrainedClassifier
from lmforge.models.onnx_runtime import ONNX_INPUTS, ONNX_OUTPUT, OnnxClassifier
from lmforge.optimize.bundles import Source, write_meta
from lmforge.optimize.report import report_on
from lmforge.tasks.classification import pad_batch

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
MIN_OPSET = 14  # the first with scaled_dot_product_attention
MAX_ABS_DIFF = 1e-4  # fp32 logits, PyTorch vs ONNX Runtime


@contextlib.contextmanager
def _export_friendly(model: nn.Module) -> Iterator[nn.Module]:
    """A Hugging Face model traced with eager attention: the same numbers as its SDPA kernel, but
    the graph ONNX Runtime's transformer optimizer recognises and fuses into one Attention op."""
    hf = model.hf if isinstance(model, PretrainedClassifier) else None
    before = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    if hf is not None and before not in (None, "eager"):
        hf.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if hf is not None and before not in (None, "eager"):
            hf.set_attn_implementation(before)


def attention_shape(source: Source) -> dict[str, int]:
    """Head count and hidden size, which ONNX Runtime's Attention fusion needs (0: guess)."""
    model = source.predictor.model
    if isinstance(model, PretrainedClassifier):
        config = model.hf.config
        heads = getattr(config, "num_attention_heads", 0)
        return {"num_heads": int(heads or 0), "hidden_size": int(config.hidden_size or 0)}
    arch = source.meta.get("architecture", {})
    return {"num_heads": arch.get("n_heads", 0), "hidden_size": arch.get("d_model", 0)}


def describe_model(model: nn.Module) -> str:
    if isinstance(model, PretrainedClassifier):
        return f"{type(model.hf).__name__} ({model.hf.config.model_type})"
    return type(model).__name__


def trace_onnx(
    model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
    outputs: list[str], axes: dict[str, dict[int, str]], opset: int, what: str,
) -> None:
    """Trace `model` once (TorchScript exporter) into `path` with the dynamic `axes`; an opset
    or a model the exporter cannot handle is an LmforgeError naming `what`."""
    if opset < MIN_OPSET:
        raise LmforgeError(
            f"--opset {opset} is too old: attention needs opset {MIN_OPSET} or newer"
        )
    # A wrapper made for the export starts in training mode, and the exporter traces the mode
    # of the module it is given, its children's included: dropout would be in the graph.
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter, not the user's concern
        try:
            torch.onnx.export(
                model, args, str(path), input_names=inputs, output_names=outputs,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                dynamo=False,  # the dynamo exporter needs onnxscript
            )
        except Exception as error:  # an architecture or opset the exporter cannot handle
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LmforgeError(f"cannot export {what} to ONNX at opset {opset}: {first}") from None


def export_onnx(model: nn.Module, sample: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    """Trace `model` once with dynamic batch and sequence axes."""
    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    axes[ONNX_OUTPUT] = {0: "batch"}
    model = model.cpu().eval()
    with _export_friendly(model):
        trace_onnx(model, (sample["input_ids"], sample["attention_mask"]), path,
                   list(ONNX_INPUTS), [ONNX_OUTPUT], axes, opset, describe_model(model))


def sample_inputs(predictor: Predictor, texts: list[str]) -> dict[str, torch.Tensor]:
    """Two texts of different lengths, so the traced graph sees padding."""
    ids = predictor.encode(texts[:64]).ids
    order = np.argsort([len(x) for x in ids])
    return pad_batch([ids[order[-1]], ids[order[0]]], predictor.tokenizer.pad_id)


def check_note(check: dict[str, Any]) -> str:
    return (
        f"ONNX Runtime vs PyTorch (fp32) on {check['texts']} texts: max |logit difference| "
        f"{check['max_abs_logit_diff']:.1e}, {check['labels_differ']} labels differ"
    )


def check_same_outputs(reference: np.ndarray, onnx: np.ndarray, what: str) -> dict[str, Any]:
    """Max |logit difference| and label agreement; an error if beyond MAX_ABS_DIFF."""
    diff = float(np.abs(reference - onnx).max()) if len(reference) else 0.0
    differ = int((reference.argmax(1) != onnx.argmax(1)).sum()) if len(reference) else 0
    if diff > MAX_ABS_DIFF or differ:
        raise LmforgeError(
            f"ONNX Runtime disagrees with PyTorch on {what}: max |logit difference| {diff:.2e} "
            f"(allowed {MAX_ABS_DIFF:.0e}), {differ} of {len(reference)} labels differ; "
            "nothing was written"
        )
    return {"max_abs_logit_diff": diff, "labels_differ": differ, "texts": len(reference)}


def onnx_meta(source: Source, operation: str, onnx: dict[str, Any]) -> dict[str, Any]:
    meta = dict(source.meta)
    meta["runtime"] = "onnx"
    meta["onnx"] = {"file": ONNX_FILE, **onnx}
    meta["derived_from"] = {"bundle": str(source.bundle_dir.resolve()), "operation": operation}
    return meta


def export_verified(source: Source, path: Path, opset: int, texts: list[str]) -> dict[str, Any]:
    """Export the source's model to `path` and compare ONNX Runtime with PyTorch on `texts`."""
    export_onnx(source.predictor.model, sample_inputs(source.predictor, texts), path, opset)
    onnx_predictor = Predictor(OnnxClassifier(path), source.predictor.tokenizer, source.meta)
    reference = source.logits(texts)
    exported, _ = onnx_predictor.logits(texts)
    return check_same_outputs(reference, exported, f"{len(texts)} texts of {source.eval_name}")


def export_bundle(source: Source, out: Path, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """`lmforge export --format onnx`: an fp32 ONNX bundle checked against PyTorch."""
    if source.is_onnx:
        raise LmforgeError(f"{source.bundle_dir} is already an ONNX bundle")
    with staged_dir(out) as tmp:
        check = export_verified(source, tmp / ONNX_FILE, opset, source.eval_split.texts)
        source.predictor.tokenizer.save(tmp)
        onnx_info = {"opset": opset, "weights": "fp32", "attention": attention_shape(source)}
        meta = onnx_meta(source, "export", onnx_info)
        write_meta(tmp, meta)
        details = {"check": check, "notes": [check_note(check)]}
        return report_on(source, tmp, out, "export to ONNX", details)
