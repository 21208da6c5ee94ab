"""Masked-language-model pre-training on a corpus's own texts, before fine-tuning on labels.

The recipe that makes large pretrained encoders work, at the scale of one dataset: useful when
no pretrained model exists for the language or domain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.tasks.classification import pad_batch

Batch = dict[str, torch.Tensor]


def make_mlm_collate(
    pad_id: int, mask_id: int, vocab_size: int, special_ids: list[int], mask_prob: float = 0.15
) -> Callable[[list[tuple[np.ndarray, int]]], Batch]:
    """BERT masking: of mask_prob of the real tokens, 80% become [MASK], 10% a random token,
    10% stay; the loss is on those positions only. Uses torch's RNG, which checkpoints restore."""
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)

    def collate(items: list[tuple[np.ndarray, int]]) -> Batch:
        batch = pad_batch([ids for ids, _ in items], pad_id)
        ids = batch["input_ids"]
        candidates = batch["attention_mask"].bool() & ~torch.isin(ids, special)
        masked = candidates & (torch.rand(ids.shape) < mask_prob)
        if not masked.any():  # keep at least one target so the loss is defined
            first = candidates.nonzero()[:1]
            masked[first[:, 0], first[:, 1]] = True
        targets = ids[masked]
        roll = torch.rand(ids.shape)
        corrupted = ids.clone()
        corrupted[masked & (roll < 0.8)] = mask_id
        random_tokens = torch.randint(len(special), vocab_size, ids.shape)
        swap = masked & (roll >= 0.8) & (roll < 0.9)
        corrupted[swap] = random_tokens[swap]
        return {"input_ids": corrupted, "attention_mask": batch["attention_mask"],
                "masked": masked, "targets": targets}

    return collate


def mlm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"], batch["masked"])
    return F.cross_entropy(logits.float(), batch["targets"])
