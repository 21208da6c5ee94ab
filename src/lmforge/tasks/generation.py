"""Text generation (a causal LM): the model for a config, training windows, loss, perplexity
beside a unigram baseline, and decoding (sampling with a KV cache).

The corpus is one flat array of token ids per split (documents separated by the end-of-text
token, memory-mapped from the token cache); every example is a window of `context` + 1 tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ModelConfig
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


# --- evaluation -------------------------------------------------------------------------------


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


def make_val_metrics(
    tokens: np.ndarray, context: int, max_tokens: int | None
) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluation the loop runs every eval_every steps: val loss and perplexity."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = token_nll(model, tokens, context, max_tokens=max_tokens)
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    return evaluate


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


# --- decoding ---------------------------------------------------------------------------------


@dataclass
class Sampling:
    """How the next token is chosen from the model's scores (already validated)."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: torch.Generator
) -> torch.Tensor:
    """(B,) next tokens from (B, vocab) scores: repetition penalty, then temperature, top-k
    and top-p (nucleus) filtering, then a draw; or the likeliest token at temperature 0."""
    logits = logits.float()
    if sampling.repetition_penalty != 1.0:  # CTRL's penalty, as in transformers
        penalised = torch.where(
            logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= sampling.top_p  # the likeliest token is always kept
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def decode_tokens(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    context: int,
    sampling: Sampling,
    generator: torch.Generator,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, for max_new_tokens steps or until
    the context is full. Prompts of different lengths are padded on the left. The caller stops
    iterating when it has what it needs (every row at its end-of-text or stop string).

    With use_cache, each step runs the model on one new token per row against the cached keys
    and values; without, on the whole sequence again (slow; the reference the cache must match).
    """
    device = next(model.parameters()).device
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((B, width), dtype=torch.long)
    key_mask = torch.zeros((B, width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        key_mask[row, width - len(prompt) :] = True
    ids, key_mask = ids.to(device), key_mask.to(device)
    ragged = not bool(key_mask.all())  # no padding: no mask, and the fused causal kernels
    steps = min(max_new_tokens, context - width)
    seen = torch.zeros((B, 0), dtype=torch.bool, device=device)  # sized at the first logits
    cache = model.new_cache(B, width + steps) if use_cache else None

    @torch.no_grad()  # not around the loop: a suspended generator must not leak the mode
    def last_logits(new_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return model(new_ids, mask, cache, last_only=True)[:, -1]

    logits = last_logits(ids, key_mask if ragged else None)
    for step in range(steps):
        if seen.shape[1] != logits.shape[-1]:
            seen = torch.zeros((B, logits.shape[-1]), dtype=torch.bool, device=device)
            # padding stands in as the row's last (real) prompt token, already marked seen
            seen.scatter_(1, torch.where(key_mask, ids, ids[:, -1:]), True)
        token = next_tokens(logits, seen, sampling, generator)
        yield token
        if step == steps - 1:
            return
        seen[torch.arange(B, device=device), token] = True
        key_mask = torch.cat([key_mask, key_mask.new_ones((B, 1))], dim=1)
        mask = key_mask if ragged else None
        if cache is not None:
            logits = last_logits(token[:, None], mask)
        else:
            ids = torch.cat([ids, token[:, None]], dim=1)
            logits = last_logits(ids, mask)
