"""Language-model evaluation: the summed negative log-likelihood of a token file under a model,
and the smoothed unigram baseline scored on the same tokens, as perplexity.

Token files are flat arrays of ids (memory-mapped; they may exceed memory).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from lmforge.evaluation.report import BASELINE_HELP


@torch.no_grad()
def token_nll(
    model: nn.Module, tokens: np.ndarray, context: int, batch_size: int = 16,
    max_tokens: int | None = None,
) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of tokens[1:], in consecutive windows
    of `context` + 1 tokens that overlap by one, so every token but the first is predicted
    once. With max_tokens, evenly spaced windows holding about that many tokens."""
    n_windows = math.ceil((len(tokens) - 1) / context) if len(tokens) > 1 else 0
    starts = np.arange(n_windows) * context
    if max_tokens is not None and n_windows * context > max_tokens:
        keep = max(1, max_tokens // context)
        starts = starts[np.linspace(0, n_windows - 1, keep).round().astype(np.int64)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    full = [s for s in starts if s + context + 1 <= len(tokens)]
    tail = [s for s in starts if s + context + 1 > len(tokens)]  # the last, shorter window
    for group in (full, tail):
        for i in range(0, len(group), batch_size):
            rows = np.stack([tokens[s : s + context + 1] for s in group[i : i + batch_size]])
            window = torch.from_numpy(rows.astype(np.int64)).to(device)
            logits = model(window[:, :-1])
            nll = F.cross_entropy(
                logits.flatten(0, 1).float(), window[:, 1:].flatten(), reduction="sum"
            )
            total, count = total + float(nll), count + window[:, 1:].numel()
    model.train(was_training)
    return total, count


def token_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of every token id, read a chunk at a time (the file may exceed memory)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start : start + chunk], dtype=np.int64)
        counts += np.bincount(part, minlength=vocab_size)[:vocab_size]
    return counts


def unigram_nll(train_counts: np.ndarray, tokens: np.ndarray) -> tuple[float, int]:
    """The baseline: each token predicted by its training frequency, add-one smoothed so an
    unseen token still has a probability; (summed NLL, count) over the same tokens[1:] as
    token_nll scores."""
    log_probs = np.log(train_counts + 1.0) - np.log(train_counts.sum() + len(train_counts))
    counts = token_counts(tokens[1:], len(train_counts))
    return float(-(counts * log_probs).sum()), int(counts.sum())


def perplexity(total_nll: float, count: int) -> float | None:
    return math.exp(total_nll / count) if count else None


def lm_report(
    model: nn.Module, tokens: dict[str, np.ndarray], train_counts: np.ndarray | None,
    context: int,
) -> dict[str, Any]:
    """eval.json of generation: val and test loss, test perplexity, and the same for a smoothed
    unigram model (fitted on the training tokens) on the same test tokens."""
    scored = {name: token_nll(model, ids, context) for name, ids in tokens.items() if len(ids) > 1}
    loss = {name: total / count for name, (total, count) in scored.items()}
    test = tokens.get("test")
    report: dict[str, Any] = {
        "n_tokens": scored["test"][1] if "test" in scored else 0,
        "val_loss": loss.get("val"),
        "test_loss": loss.get("test"),
        "perplexity": perplexity(*scored["test"]) if "test" in scored else None,
        "baselines": {},
    }
    if train_counts is not None and test is not None and len(test) > 1:
        total, count = unigram_nll(train_counts, test)
        report["baselines"]["unigram"] = {
            "test_loss": total / count, "perplexity": perplexity(total, count)
        }
    return report


def render_lm_table(report: dict[str, Any], console: Console, title: str) -> None:
    """The model beside the unigram baseline: losses to 3 decimals, perplexities to 1, with
    thousands separated, in every row."""
    table = Table(title=title)
    for column in ("model", "val loss", "test loss", "perplexity"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def loss(value: float | None) -> str:
        return "-" if value is None else f"{value:,.3f}"

    def ppl(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    table.add_row("this model", loss(report["val_loss"]), loss(report["test_loss"]),
                  ppl(report["perplexity"]))
    unigram = report["baselines"].get("unigram")
    if unigram:
        table.add_row("unigram baseline", "-", loss(unigram["test_loss"]),
                      ppl(unigram["perplexity"]))
    console.print(table)
    console.print(f"{report['n_tokens']:,} test tokens; loss is nats per token")
    if unigram and report["test_loss"] is not None and report["test_loss"] >= unigram["test_loss"]:
        console.print("the model does not beat the unigram baseline: train longer "
                      "(train.max_steps), on more text, or fine-tune a pretrained causal LM "
                      f"(model.arch: pretrained); {BASELINE_HELP}", markup=False)
