"""Text generation (a causal LM): the model for a config, training windows, the loss, and the
validation metrics the training loop logs. Decoding is in lmforge.decoding; test perplexity
beside the unigram baseline in lmforge.evaluation.language_model.

The corpus is one flat array of token ids per split (documents separated by the end-of-text
token, memory-mapped from the token cache); every example is a window of `context` + 1 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
from lmforge.evaluation.language_model import token_nll
from lmforge.models import GPT, GPTConfig, load_pretrained_causal_lm
from lmforge.tokenization import TextTokenizer

Batch = dict[str, torch.Tensor]


def architecture(cfg: ModelConfig, tokenizer: TextTokenizer) -> GPTConfig:
    return GPTConfig(
        vocab_size=tokenizer.vocab_size,
        max_length=cfg.max_length,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_ff=cfg.d_ff,
        dropout=cfg.dropout,
    )


def build_model(cfg: ModelConfig, tokenizer: TextTokenizer) -> nn.Module:
    if cfg.arch == "pretrained":
        return load_pretrained_causal_lm(
            cfg.pretrained, cfg.revision, cfg.trust_remote_code, cfg.gradient_checkpointing
        )
    model = GPT(architecture(cfg, tokenizer))
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model


# --- training ---------------------------------------------------------------------------------


@dataclass
class TokenWindows(Sequence):
    """The training examples: item i is the start of the i-th stretch of `context` tokens, so an
    epoch covers the corpus once. The collate function moves each window by a random offset
    (torch's RNG, which checkpoints restore), so every epoch sees different windows."""

    tokens: np.ndarray
    context: int

    def __len__(self) -> int:
        return max(1, (len(self.tokens) - 1) // self.context)

    def __getitem__(self, i: int) -> int:
        return i * self.context


def make_collate(tokens: np.ndarray, context: int) -> Callable[[list[int]], Batch]:
    last_start = len(tokens) - context - 1

    def collate(starts: list[int]) -> Batch:
        shifts = torch.randint(0, context, (len(starts),))
        moved = np.minimum(np.asarray(starts) + shifts.numpy(), last_start)
        rows = [np.asarray(tokens[s : s + context + 1], dtype=np.int64) for s in moved]
        window = torch.from_numpy(np.stack(rows))  # (B, context + 1)
        return {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    return collate


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of predicting every next token."""
    logits = model(batch["input_ids"])  # (B, T, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())


# --- validation -------------------------------------------------------------------------------


def make_val_metrics(
    tokens: np.ndarray, context: int, max_tokens: int | None
) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluation the loop runs every eval_every steps: val loss and perplexity."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = token_nll(model, tokens, context, max_tokens=max_tokens)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    return evaluate
