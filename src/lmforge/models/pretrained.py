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


class PretrainedCache:
    """A Hugging Face cache object and how many positions it holds, behind our KVCache's face."""

    def __init__(self) -> None:
        from transformers import DynamicCache

        self.past = DynamicCache()
        self.length = 0


class PretrainedCausalLM(nn.Module):
    """AutoModelForCausalLM behind the call signature of lmforge's GPT:
    `forward(input_ids, key_mask, cache, last_only) -> logits`, and `new_cache(batch, length)`."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(getattr(self.hf, "is_gradient_checkpointing", False))

    def new_cache(self, batch: int, length: int) -> PretrainedCache:
        return PretrainedCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        cache: PretrainedCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        past = cache.length if cache is not None else 0
        kwargs = {}
        if key_mask is not None:
            kwargs["attention_mask"] = key_mask.long()
            positions = (key_mask.long().cumsum(1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions[:, past:]
        out = self.hf(
            input_ids=input_ids,
            past_key_values=cache.past if cache is not None else None,
            use_cache=cache is not None,
            logits_to_keep=1 if last_only else 0,
            **kwargs,
        )
        if cache is not None:
            cache.length += input_ids.shape[1]
        return out.logits

    def save(self, directory: Path) -> None:
        self.hf.save_pretrained(directory, safe_serialization=True)


def load_pretrained_causal_lm(
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> PretrainedCausalLM:
    """A hub id or local folder through AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"cannot load pretrained causal LM '{name}': {str(error).splitlines()[0]}"
        ) from None
    if gradient_checkpointing:  # renamed in transformers 5; the old name still in 4.x
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False  # the cache is useless, and warned about, in training
    return PretrainedCausalLM(model)
