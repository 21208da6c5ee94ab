"""Adapters that give Hugging Face models the same call signature as lmforge's own models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError


class PretrainedClassifier(nn.Module):
    """AutoModelForSequenceClassification behind `forward(input_ids, attention_mask) -> logits`."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits

    def save(self, directory: Path) -> None:
        self.hf.save_pretrained(directory, safe_serialization=True)


def load_pretrained_classifier(
    name: str,
    labels: list[str],
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PretrainedClassifier:
    """A hub id or local folder, with a fresh classification head sized to `labels`."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights are newly initialized" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            revision=revision,
            trust_remote_code=trust_remote_code,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"cannot load pretrained model '{name}': {str(error).splitlines()[0]}"
        ) from None
    return PretrainedClassifier(model)
