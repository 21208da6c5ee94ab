"""Model architectures: lmforge's own Transformer family and adapters for Hugging Face models."""

from lmforge.models.pretrained import (
    PretrainedCausalLM,
    PretrainedClassifier,
    PretrainedSeq2SeqLM,
    load_pretrained_causal_lm,
    load_pretrained_classifier,
    load_pretrained_seq2seq,
)
from lmforge.models.transformer import (
    GPT,
    EncoderClassifier,
    EncoderDecoder,
    GPTConfig,
    Seq2SeqConfig,
    TransformerConfig,
)

__all__ = [
    "GPT",
    "EncoderClassifier",
    "EncoderDecoder",
    "GPTConfig",
    "PretrainedCausalLM",
    "PretrainedClassifier",
    "PretrainedSeq2SeqLM",
    "Seq2SeqConfig",
    "TransformerConfig",
    "load_pretrained_causal_lm",
    "load_pretrained_classifier",
    "load_pretrained_seq2seq",
]
