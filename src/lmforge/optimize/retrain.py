"""The short training runs compression needs (a pruned model's fine-tune, a student's training),
through the same loop as `lmforge train`, in a scratch folder that is removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.data import Split
from lmforge.tasks.classification import TokenizedSplit, make_val_metrics
from lmforge.tokenization import TextTokenizer
from lmforge.training import fit, seed_everything
from lmforge.training.checkpoint import load_checkpoint

Batch = dict[str, torch.Tensor]


def encode_split(
    tokenizer: TextTokenizer, split: Split, labels: list[str], max_length: int
) -> TokenizedSplit:
    """Token ids and label indices of an already cleaned split, as training encodes them."""
    index = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer.encode(split.texts, max_length)
    return TokenizedSplit(encoded.ids, np.array([index[y] for y in split.labels], dtype=np.int64))


def train_in_scratch(
    model: nn.Module,
    train: Any,
    collate: Callable[[list[Any]], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    val: TokenizedSplit | None,
    pad_id: int,
    cfg: TrainConfig,
    show_progress: bool,
) -> None:
    """Train `model` in place; with a val split, end on its best checkpoint (val, never test)."""
    seed_everything(cfg.seed)
    lengths = np.array([len(item[0]) for item in train])
    evaluate = make_val_metrics(val, pad_id) if val is not None and len(val) else None
    with tempfile.TemporaryDirectory(prefix="lmforge-compress-") as scratch:
        result = fit(
            model,
            train,
            collate,
            loss_fn,
            evaluate,
            cfg,
            Path(scratch),
            metric_mode="min" if "loss" in cfg.early_stopping_metric else "max",
            show_progress=show_progress,
            lengths=lengths,
        )
        if evaluate is not None and result.best_dir is not None:
            load_checkpoint(result.best_dir, model, with_state=False)
    model.cpu().eval()
