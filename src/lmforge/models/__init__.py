"""Model architectures: lmforge's own Transformer family and adapters for Hugging Face models."""

from lmforge.models.pretrained import (
    PretrainedCausalLM,
    PretrainedClassifier,
    load_pretrained_causal_lm,
    load_pretrained_classifier,
)
from lmforge.models.transformer import GPT, EncoderClassifier, GPTConfig, TransformerConfig

__all__ = [
    "GPT",
    "EncoderClassifier",
    "GPTConfig",
    "PretrainedCausalLM",
    "PretrainedClassifier",
    "TransformerConfig",
    "load_pretrained_causal_lm",
    "load_pretrained_classifier",
]
