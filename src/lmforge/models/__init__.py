"""Model architectures: lmforge's own Transformer family and adapters for Hugging Face models."""

from lmforge.models.pretrained import PretrainedClassifier, load_pretrained_classifier
from lmforge.models.transformer import EncoderClassifier, TransformerConfig

__all__ = [
    "EncoderClassifier",
    "PretrainedClassifier",
    "TransformerConfig",
    "load_pretrained_classifier",
]
