"""Text classification: the model for a config, batching, loss, probabilities and val metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models import EncoderClassifier, TransformerConfig, load_pretrained_classifier
from lmforge.tokenization import TextTokenizer

Batch = dict[str, torch.Tensor]


@dataclass
class TokenizedSplit(Sequence):
    """Token ids per text and label indices; item i is (ids, label index)."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.ids[i], int(self.labels[i])


def pad_batch(ids: list[np.ndarray], pad_id: int) -> Batch:
    """Pad to the longest sequence in the batch, not to max_length: short texts stay cheap."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        attention_mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def make_collate(
    pad_id: int, mask_id: int | None = None, token_dropout: float = 0.0,
    special_ids: list[int] | None = None,
) -> Callable[[list[tuple[np.ndarray, int]]], Batch]:
    """Batches for training. With token_dropout, that share of each text's tokens is replaced
    by [MASK]: the model cannot lean on any single token, which regularises small datasets."""
    special = torch.tensor(sorted(set(special_ids or [pad_id])), dtype=torch.long)

    def collate(items: list[tuple[np.ndarray, int]]) -> Batch:
        batch = pad_batch([ids for ids, _ in items], pad_id)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.long)
        if token_dropout and mask_id is not None:
            ids = batch["input_ids"]
            drop = (torch.rand(ids.shape) < token_dropout) & ~torch.isin(ids, special)
            batch["input_ids"] = ids.masked_fill(drop, mask_id)
        return batch

    return collate


def build_model(cfg: ModelConfig, tokenizer: TextTokenizer, labels: list[str]) -> nn.Module:
    if cfg.arch == "pretrained":
        return load_pretrained_classifier(
            cfg.pretrained, labels, cfg.revision, cfg.trust_remote_code
        )
    return EncoderClassifier(architecture(cfg, tokenizer, labels))


def architecture(
    cfg: ModelConfig, tokenizer: TextTokenizer, labels: list[str]
) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        n_classes=len(labels),
        max_length=cfg.max_length,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
        pooling=cfg.pooling,
        pad_id=tokenizer.pad_id,
    )


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """n / (k * count): each class contributes equally to the loss (sklearn's 'balanced')."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(weights: torch.Tensor | None = None) -> Callable[[nn.Module, Batch], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"])
        w = weights.to(logits.device) if weights is not None else None
        return F.cross_entropy(logits.float(), batch["labels"], weight=w)

    return loss_fn


@torch.no_grad()
def predict_logits(
    model: nn.Module, ids: list[np.ndarray], pad_id: int, batch_size: int = 64
) -> np.ndarray:
    """Logits (n, classes) in input order. Batches are formed from length-sorted texts, so
    padding is small; the order is deterministic, so the same texts give the same numbers."""
    if not ids:
        return np.zeros((0, 0), dtype=np.float32)
    was_training = model.training
    model.eval()
    # a model without torch parameters (an ONNX Runtime session) takes its inputs on the CPU
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[np.ndarray | None] = [None] * len(ids)
    for start in range(0, len(ids), batch_size):
        chunk = order[start : start + batch_size]
        batch = pad_batch([ids[i] for i in chunk], pad_id)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        for row, i in enumerate(chunk):
            out[i] = logits[row].float().cpu().numpy()
    model.train(was_training)
    return np.stack(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def make_val_metrics(split: TokenizedSplit, pad_id: int) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluation the loop runs every eval_every steps: val loss, accuracy and macro-F1."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        logits = predict_logits(model, split.ids, pad_id)
        loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(split.labels).long())
        pred = logits.argmax(axis=1)
        return {
            "val_loss": float(loss),
            "accuracy": float((pred == split.labels).mean()),
            "f1_macro": float(f1_score(split.labels, pred, average="macro", zero_division=0)),
        }

    return evaluate
