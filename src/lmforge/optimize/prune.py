"""Magnitude pruning: the smallest `amount` of each linear layer's weights set to zero (L1,
unstructured), optionally a short fine-tune with the zeros held, then made permanent.

Unstructured zeros do not make a dense safetensors file smaller or a dense matmul faster: the
bundle keeps its size. What is reported is the real sparsity and what it costs in accuracy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.utils import prune

from lmforge.bundle import save_bundle
from lmforge.errors import LmforgeError
from lmforge.files import staged_dir
from lmforge.optimize.bundles import Source
from lmforge.optimize.report import report_on
from lmforge.optimize.retrain import encode_split, train_in_scratch
from lmforge.tasks.classification import balanced_class_weights, make_collate, make_loss


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def prune_linear_layers(model: nn.Module, amount: float) -> None:
    """Mask the `amount` smallest-magnitude weights of every nn.Linear (held at zero in any
    fine-tune until make_permanent)."""
    for layer in linear_layers(model):
        prune.l1_unstructured(layer, name="weight", amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Fold each mask into its weight, so the zeros are plain weights in the saved bundle."""
    for layer in linear_layers(model):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exact zeros: in the linear layers' weights, and in all parameters."""
    linear = [layer.weight for layer in linear_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in linear)
    total = sum(w.numel() for w in linear)
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {"linear_weights": zeros / max(total, 1), "all_params": all_zeros / max(all_total, 1)}


def check_amount(amount: float) -> None:
    if not 0 <= amount < 1:
        raise LmforgeError(f"--prune takes a fraction in [0, 1), got {amount}")


def _finetune(source: Source, model: nn.Module, steps: int, show_progress: bool) -> None:
    cfg, data = source.run_data("--finetune-steps")
    tokenizer, labels = source.predictor.tokenizer, source.meta["labels"]
    max_length = source.meta["max_length"]
    train = encode_split(tokenizer, data.train, labels, max_length)
    val = encode_split(tokenizer, data.val, labels, max_length) if data.val.texts else None
    weights = None
    if cfg.classification.class_weights == "balanced":
        weights = balanced_class_weights(train.labels, len(labels))
    train_cfg = cfg.train.model_copy(
        update={"max_steps": steps, "eval_every": steps, "early_stopping_patience": None}
    )
    train_in_scratch(
        model,
        train,
        make_collate(tokenizer.pad_id),
        make_loss(weights),
        val,
        tokenizer.pad_id,
        train_cfg,
        show_progress,
    )


def prune_bundle(
    source: Source, out: Path, amount: float, finetune_steps: int = 0, show_progress: bool = True
) -> dict[str, Any]:
    """`lmforge compress --prune AMOUNT [--finetune-steps N]`: a pruned PyTorch bundle."""
    check_amount(amount)
    if finetune_steps < 0:
        raise LmforgeError(f"--finetune-steps must be 0 or more, got {finetune_steps}")
    if source.is_onnx:
        origin = source.meta.get("derived_from", {}).get("bundle", "the PyTorch bundle")
        raise LmforgeError(
            f"{source.bundle_dir} is an ONNX bundle; prune the PyTorch bundle it came from "
            f"({origin}), then export that"
        )
    model = copy.deepcopy(source.predictor.model)
    prune_linear_layers(model, amount)
    if finetune_steps:
        _finetune(source, model, finetune_steps, show_progress)
    make_permanent(model)
    measured = sparsity(model)
    meta = dict(source.meta)
    meta["derived_from"] = {"bundle": str(source.bundle_dir.resolve()), "operation": "prune"}
    details = {
        "pruning": {
            "method": "L1 unstructured, per nn.Linear weight",
            "amount": amount,
            "finetune_steps": finetune_steps,
            "sparsity": measured,
        },
        "notes": [
            f"sparsity: {measured['linear_weights']:.1%} of the linear layers' weights are zero "
            f"({measured['all_params']:.1%} of all parameters); the weights are stored dense, "
            "so size and dense-kernel latency do not drop"
        ],
    }
    meta["pruning"] = details["pruning"]
    with staged_dir(out) as tmp:
        save_bundle(tmp, model, source.predictor.tokenizer, meta)
        operation = f"pruning {amount:.0%}"
        if finetune_steps:
            operation += f" + {finetune_steps} fine-tune steps"
        return report_on(source, tmp, out, operation, details)
